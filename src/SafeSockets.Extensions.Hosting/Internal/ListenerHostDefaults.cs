using System.Diagnostics.Metrics;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace SafeSockets.Extensions.Hosting.Internal;

/// <summary>Gives every hosted listener the host's logging and metrics, unless the code set its own.</summary>
internal sealed class ListenerHostDefaults : IPostConfigureOptions<HostedListenerOptions>
{
    /// <summary>The logger category of the listeners and their connections.</summary>
    public const string LoggerCategory = "SafeSockets";

    private readonly ILoggerFactory? _loggerFactory;
    private readonly IMeterFactory? _meterFactory;

    public ListenerHostDefaults(IServiceProvider services)
    {
        _loggerFactory = services.GetService<ILoggerFactory>();
        _meterFactory = services.GetService<IMeterFactory>();
    }

    public void PostConfigure(string? name, HostedListenerOptions options)
    {
        // A copy again: a configure the code registered after AddManagedListener may have set objects of its own.
        options.Listener = OptionsCopy.Of(options.Listener);
        ManagedConnectionOptions connection = options.Listener.Connection;
        if (_loggerFactory is not null && ReferenceEquals(connection.Logger, NullLogger.Instance))
        {
            connection.Logger = _loggerFactory.CreateLogger(LoggerCategory);
        }

        connection.MeterFactory ??= _meterFactory;
    }
}
