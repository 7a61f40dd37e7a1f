namespace SafeSockets.Concurrency;

/// <summary>Combinators the Coyote 1.7.11 engine controls.</summary>
/// <remarks>
/// <para>On .NET 9+ the C# compiler binds <c>Task.WhenAll(a, b)</c> to the new <c>params ReadOnlySpan&lt;Task&gt;</c>
/// overload, which the rewriter does not know (the engine reports an uncontrolled invocation): <see cref="All"/> goes
/// through the array overload.</para>
/// <para>Task.WhenAny over TaskCompletionSource tasks is reported by the engine as a deadlock even after one of them
/// completed: <see cref="FirstAsync"/> races two controlled tasks instead.</para>
/// </remarks>
internal static class Controlled
{
    public static Task All(params Task[] tasks) => Task.WhenAll(tasks);

    /// <summary>Whether <paramref name="first"/> completes before <paramref name="second"/> (if both are complete already,
    /// <paramref name="first"/> wins, as Task.WhenAny's first argument does).</summary>
    public static async Task<bool> FirstAsync(Task first, Task second)
    {
        if (first.IsCompleted)
        {
            return true;
        }

        if (second.IsCompleted)
        {
            return false;
        }

        var winner = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        _ = Task.Run(async () =>
        {
            await first;
            winner.TrySetResult(true);
        });
        _ = Task.Run(async () =>
        {
            await second;
            winner.TrySetResult(false);
        });
        return await winner.Task;
    }
}
