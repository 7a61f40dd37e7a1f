using System.Diagnostics.CodeAnalysis;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using SafeSockets;
using SafeSockets.Extensions.Hosting;
using SafeSockets.Extensions.Hosting.Internal;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers hosted SafeSockets listeners.</summary>
public static class ManagedListenerServiceCollectionExtensions
{
    /// <summary>Adds a <see cref="ManagedListener"/> that starts and stops with the host and serves each connection with a
    /// <typeparamref name="THandler"/> from a dependency-injection scope of its own.</summary>
    /// <typeparam name="THandler">The connection handler; registered as scoped unless already registered.</typeparam>
    /// <param name="services">The service collection.</param>
    /// <param name="name">The listener's name: its options' name and its configuration section <c>SafeSockets:Listeners:{name}</c>.</param>
    /// <param name="configure">Sets the options in code; configuration is applied after it, so configuration wins.</param>
    /// <returns>The service collection.</returns>
    /// <remarks>The options are validated when the host starts (a bad configuration value stops it with an error naming the
    /// key and the rule). On the host's stop, the listener stops accepting, closes every connection gracefully (FIN, bounded
    /// drain) and aborts those still open when the host's shutdown timeout ends.</remarks>
    /// <exception cref="ArgumentException"><paramref name="name"/> is empty, contains ':' or is already used (ignoring case).</exception>
    public static IServiceCollection AddManagedListener<[DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicConstructors)] THandler>(
        this IServiceCollection services, string name, Action<HostedListenerOptions>? configure = null)
        where THandler : class, IConnectionHandler
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        if (name.Contains(':', StringComparison.Ordinal))
        {
            throw new ArgumentException($"A listener's name is a configuration key and cannot contain ':'; got '{name}'.", nameof(name));
        }

        // Configuration keys ignore case: "echo" and "Echo" would bind the same section.
        if (services.Select(d => d.ImplementationInstance).OfType<ListenerName>().FirstOrDefault(used => string.Equals(used.Name, name, StringComparison.OrdinalIgnoreCase)) is { } taken)
        {
            throw new ArgumentException($"A SafeSockets listener named '{name}' is already registered (as '{taken.Name}'; names are configuration keys, which ignore case).", nameof(name));
        }

        services.AddSingleton(new ListenerName(name));
        services.TryAddScoped<THandler>();
        OptionsBuilder<HostedListenerOptions> options = services.AddOptions<HostedListenerOptions>(name);
        if (configure is not null)
        {
            options.Configure(configure);
        }

        services.AddSingleton<IConfigureOptions<HostedListenerOptions>>(sp => new ConfigurationBinding(name, sp.GetService<IConfiguration>()));
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IPostConfigureOptions<HostedListenerOptions>, ListenerHostDefaults>(static sp => new ListenerHostDefaults(sp)));
        services.AddSingleton<IValidateOptions<HostedListenerOptions>>(new EndPointRequired(name));
        options.ValidateOnStart();

        services.AddSingleton<IHostedService>(sp => new ManagedListenerService(
            name,
            typeof(THandler),
            sp.GetRequiredService<IServiceScopeFactory>(),
            sp.GetRequiredService<IOptionsMonitor<HostedListenerOptions>>(),
            sp.GetService<ILoggerFactory>()));
        return services;
    }

    /// <summary>Marks a listener name as taken.</summary>
    private sealed record ListenerName(string Name);
}
