using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>Unexpected exceptions are logged at Error with the exception itself (a new event), never swallowed and never
/// passed off as the peer's reset.</summary>
public sealed class FailureReportingTests
{
    // The events the library had before unexpected failures were reported (1 forced close ... 8 listener stopped).
    private static readonly int[] s_existingEventIds = [1, 2, 3, 4, 5, 6, 7, 8];

    [Fact]
    public async Task PeerClosed_CallbackThrows_ExceptionIsLoggedAtError_CloseStillGraceful()
    {
        var logs = new CapturingLogger();
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(new ManagedConnectionOptions { Logger = logs });
        using (peer)
        {
            var boom = new InvalidOperationException("boom");
            connection.PeerClosed.Register(() => throw boom);
            peer.Shutdown(SocketShutdown.Send);

            LogEntry error = await logs.FirstError.WithTimeout();
            Assert.Equal(LogLevel.Error, error.Level);
            Assert.Contains(boom, CapturingLogger.Chain(error.Exception));
            Assert.DoesNotContain(error.Id, s_existingEventIds);

            // A failing callback is the application's fault, not the connection's: the close is still graceful.
            Assert.Equal(CloseOutcome.Graceful, (await connection.CloseAsync().WithTimeout()).Outcome);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
        }
    }

    [Fact]
    public async Task ReceiveLoop_UnexpectedExceptionAtThePeersFin_IsLoggedAtErrorAndNotReportedAsPeerReset()
    {
        // The one public way to make the receive loop fail from the outside: the clock it asks when the peer's FIN arrives.
        var clock = new FailingClock();
        var logs = new CapturingLogger();
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(new ManagedConnectionOptions { Logger = logs, TimeProvider = clock });
        using (peer)
        {
            try
            {
                var failure = new InvalidOperationException("the clock failed");
                clock.FailNextRead(failure);
                peer.Shutdown(SocketShutdown.Send);
                await clock.Failed.WithTimeout();

                // The peer sent FIN, not RST: whatever the loop does with its own failure, it is not the peer's reset.
                CloseResult result = await connection.CloseAsync().WithTimeout();
                Assert.NotEqual(CloseOutcome.PeerReset, result.Outcome);
                Assert.DoesNotContain(logs.Entries, e => e.Id == 4);

                LogEntry error = await logs.FirstError.WithTimeout();
                Assert.Equal(LogLevel.Error, error.Level);
                Assert.Contains(failure, CapturingLogger.Chain(error.Exception));
                Assert.DoesNotContain(error.Id, s_existingEventIds);
                Assert.Equal(1, clock.Failures);
            }
            finally
            {
                connection.Abort();
            }
        }
    }

    /// <summary>The system clock, except that the first read after <see cref="FailNextRead"/> throws.</summary>
    private sealed class FailingClock : TimeProvider
    {
        private Exception? _next;
        private readonly TaskCompletionSource _failed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _failures;

        /// <summary>Completes once a read has thrown.</summary>
        public Task Failed => _failed.Task;

        public int Failures => Volatile.Read(ref _failures);

        public void FailNextRead(Exception exception) => Volatile.Write(ref _next, exception);

        public override long GetTimestamp()
        {
            if (Interlocked.Exchange(ref _next, null) is { } failure)
            {
                Interlocked.Increment(ref _failures);
                _failed.TrySetResult();
                throw failure;
            }

            return base.GetTimestamp();
        }
    }
}
