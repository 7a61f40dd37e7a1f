using Microsoft.Extensions.Logging;

namespace SafeSockets.Tests.Infrastructure;

/// <summary>One log entry as the logger received it.</summary>
internal sealed record LogEntry(int Id, LogLevel Level, string Message, Exception? Exception);

/// <summary>An <see cref="ILogger"/> that keeps every entry and signals the first one at <see cref="LogLevel.Error"/> or above.</summary>
internal sealed class CapturingLogger : ILogger
{
    private readonly List<LogEntry> _entries = [];
    private readonly TaskCompletionSource<LogEntry> _firstError = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public IReadOnlyList<LogEntry> Entries
    {
        get
        {
            lock (_entries)
            {
                return [.. _entries];
            }
        }
    }

    /// <summary>Completes with the first entry logged at Error or Critical.</summary>
    public Task<LogEntry> FirstError => _firstError.Task;

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        var entry = new LogEntry(eventId.Id, logLevel, formatter(state, exception), exception);
        lock (_entries)
        {
            _entries.Add(entry);
        }

        if (logLevel >= LogLevel.Error)
        {
            _firstError.TrySetResult(entry);
        }
    }

    /// <summary>The exception and everything it wraps (inner exceptions, aggregated ones).</summary>
    public static IEnumerable<Exception> Chain(Exception? exception)
    {
        if (exception is null)
        {
            yield break;
        }

        yield return exception;
        IEnumerable<Exception> inner = exception is AggregateException aggregate ? aggregate.InnerExceptions : exception.InnerException is { } one ? [one] : [];
        foreach (Exception child in inner)
        {
            foreach (Exception nested in Chain(child))
            {
                yield return nested;
            }
        }
    }
}
