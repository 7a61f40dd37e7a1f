using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace SafeSockets.Internal;

/// <summary>The application's logger, with what it throws contained: a logger that fails must not stop a teardown half way,
/// leave a listener's stop waiting for ever, or crash the process from a thread-pool work item (session 12's review: each
/// of those happened with a logger that throws).</summary>
/// <remarks>What the logger throws is dropped: there is no other logger to report it to. <see cref="NullLogger"/> is kept
/// as it is (nothing to contain).</remarks>
internal sealed class ContainedLogger : ILogger
{
    private readonly ILogger _inner;

    private ContainedLogger(ILogger inner) => _inner = inner;

    public static ILogger Wrap(ILogger logger) => logger is NullLogger or ContainedLogger ? logger : new ContainedLogger(logger);

#pragma warning disable CA1031 // The point of this type: nothing the application's logger throws reaches the library's code.
    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull
    {
        try
        {
            return _inner.BeginScope(state);
        }
        catch (Exception)
        {
            return null;
        }
    }

    public bool IsEnabled(LogLevel logLevel)
    {
        try
        {
            return _inner.IsEnabled(logLevel);
        }
        catch (Exception)
        {
            return false;
        }
    }

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        try
        {
            _inner.Log(logLevel, eventId, state, exception, formatter);
        }
        catch (Exception)
        {
            // Dropped: see the type's remarks.
        }
    }
#pragma warning restore CA1031
}
