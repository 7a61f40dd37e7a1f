using System.Diagnostics;

namespace SafeSockets.Tests.Infrastructure;

/// <summary>The one place test timeouts come from (infinite under a debugger).</summary>
internal static class TestTimeouts
{
    /// <summary>How long an operation that should pass may take on a loaded 2-core machine before the test fails.</summary>
    public static TimeSpan Passing => Debugger.IsAttached ? Timeout.InfiniteTimeSpan : TimeSpan.FromSeconds(30);

    public static Task WithTimeout(this Task task) => task.WaitAsync(Passing);

    public static Task<T> WithTimeout<T>(this Task<T> task) => task.WaitAsync(Passing);

    public static Task WithTimeout(this ValueTask task) => task.AsTask().WaitAsync(Passing);

    public static Task<T> WithTimeout<T>(this ValueTask<T> task) => task.AsTask().WaitAsync(Passing);

    /// <summary>A task that completes when <paramref name="token"/> is cancelled.</summary>
    public static Task WhenCanceled(this CancellationToken token)
    {
        var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        token.Register(static s => ((TaskCompletionSource)s!).TrySetResult(), tcs);
        return tcs.Task;
    }

    /// <summary>Waits for a condition that no event signals (a kernel table, a count), checking it on every yield,
    /// bounded by <see cref="Passing"/>. Not a sleep: it returns as soon as the condition holds.</summary>
    public static async Task WaitUntilAsync(Func<bool> condition, string what)
    {
        using var timeout = new CancellationTokenSource(Passing);
        while (!condition())
        {
            if (timeout.IsCancellationRequested)
            {
                throw new TimeoutException($"Timed out waiting until {what}.");
            }

            await Task.Delay(1);
        }
    }

    public static CancellationToken Token() => new CancellationTokenSource(Passing).Token;
}
