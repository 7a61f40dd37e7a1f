namespace SafeSockets.Tests.Infrastructure;

/// <summary>The synchronization context of a UI thread that is blocked waiting for the library (<c>.Wait()</c>,
/// <c>.GetAwaiter().GetResult()</c>): work posted to it never runs. It counts the posts, so a test can assert the library
/// posted nothing (every await inside it uses <c>ConfigureAwait(false)</c>) and that what it started still completes.</summary>
internal sealed class BlockedSynchronizationContext : SynchronizationContext
{
    private int _posts;

    /// <summary>How many continuations were posted here (and never ran).</summary>
    public int Posts => Volatile.Read(ref _posts);

    public override void Post(SendOrPostCallback d, object? state) => Interlocked.Increment(ref _posts);

    public override void Send(SendOrPostCallback d, object? state) =>
        throw new InvalidOperationException("A blocked UI thread cannot run work sent to it.");

    public override SynchronizationContext CreateCopy() => this;

    /// <summary>Calls <paramref name="start"/> on this thread with this context current (as a UI event handler would),
    /// then puts the previous context back; the test awaits the returned task outside the context.</summary>
    public T Start<T>(Func<T> start) => SynchronizationContextScope.Run(this, start);
}
