namespace SafeSockets.Tests.Infrastructure;

/// <summary>Runs code on the calling thread with a given synchronization context current (as a UI event handler would),
/// then puts the previous context back.</summary>
internal static class SynchronizationContextScope
{
    public static T Run<T>(SynchronizationContext context, Func<T> start)
    {
        SynchronizationContext? previous = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(context);
        try
        {
            return start();
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }
    }
}
