using System.Diagnostics;
using SafeSockets.Diagnostics;

namespace SafeSockets.Internal;

/// <summary>The lifecycle of one connection: what was shut down, who asked for the teardown and why, whether the socket
/// was released (and how), the one <see cref="CloseResult"/>, and the owners' reference count. No I/O.</summary>
/// <remarks>
/// <para>Every field below changes only under the lock of this object (it is internal and never handed out, so nothing
/// else can lock it; a separate lock object would cost 24 bytes per connection). Transitions are named methods that return what the
/// caller must do; none calls out (no socket call, no callback, no await, no task completion) while it holds the lock.
/// Completion's task is completed after the lock is left, and it runs its continuations asynchronously.</para>
/// <para>docs/lifecycle.md's transition table lists these methods one by one.</para>
/// <para>Rules that make the teardown correct by construction:</para>
/// <list type="bullet">
/// <item>Exactly one caller wins <see cref="TryBeginTeardown"/> (or <see cref="RequestAbort"/> with
/// <see cref="AbortAction.RunTeardown"/>) and runs the teardown routine; every other party only requests it.</item>
/// <item>Exactly one caller wins <see cref="TryRelease"/>, the only permission to dispose the socket; it learns there
/// whether the release is abortive (linger 0), which is decided by the reason at that moment.</item>
/// <item>The result is written once, in <see cref="Record"/>, after the release, and published (Completion) by
/// <see cref="PublishResult"/> once the connection has reported it; its outcome is <see cref="CloseOutcome.Aborted"/>
/// exactly when the release was abortive, so <see cref="State"/> and the outcome cannot disagree.</item>
/// </list>
/// </remarks>
[DebuggerDisplay("{State} reason={_reason} leases={_leases}")]
internal sealed class ConnectionLifecycle
{
    private static readonly Action<ConnectionState, ConnectionState> s_metrics = Metrics.StateChanged;

    // Told of every change of the published state, outside the lock: the metrics of live connections by state
    // (a test passes its own recorder to check that every transition is reported exactly once).
    private readonly Action<ConnectionState, ConnectionState> _stateChanged;

    // Our FIN is queued (shutdown(SHUT_WR) done, by ShutdownSendAsync, the Transport output or the teardown).
    private bool _sendShutdown;

    // The peer's FIN (or reset) was seen.
    private bool _peerFin;

    // The peer reset the connection.
    private bool _peerReset;

    // Where the teardown is: not asked for, running (its owner is at work), socket released, result recorded.
    private TeardownStage _stage;

    // Why the connection is being torn down; the first request wins, except that Abort escalates over anything but a
    // release that already happened.
    private CloseReason _reason;

    // The socket was released with linger 0 (a reset on purpose). Decided by TryRelease from the reason.
    private bool _abortive;

    // Written once by Record; valid when _stage == Recorded.
    private CloseResult _result;

    // Completion's task, made on first demand; completed outside the lock by PublishResult, after Record and after the
    // connection reported the end (metrics, logs, its listener), so whoever awaits Completion finds them in place.
    private TaskCompletionSource<CloseResult>? _completion;

    // PublishResult ran: Completion is (or is made) complete.
    private bool _published;

    // An application call (CloseAsync) has been handed the result; later ones get AlreadyClosed.
    private bool _resultClaimed;

    // References held by owners: the creator's (until DisposeAsync) and each unreleased ConnectionLease.
    private int _leases = 1;

    // DisposeAsync has released the creator's reference.
    private bool _creatorReleased;

    // A copy of State for lock-free reads on the hot path (checks before a send or a receive). Written under the lock.
    private volatile ConnectionState _state;

    /// <summary>A lifecycle whose state changes go to the <c>safesockets.connections.current</c> metric.</summary>
    public ConnectionLifecycle()
        : this(s_metrics)
    {
    }

    /// <summary>A lifecycle whose state changes go to <paramref name="stateChanged"/> (before, after), outside the lock.</summary>
    internal ConnectionLifecycle(Action<ConnectionState, ConnectionState> stateChanged) => _stateChanged = stateChanged;

    /// <summary>What <see cref="RequestAbort"/> tells its caller to do.</summary>
    public enum AbortAction
    {
        /// <summary>The socket is already released (or being released by an abort): nothing to do.</summary>
        None,

        /// <summary>No teardown was running: the caller owns it now and performs it as an abort (release with linger 0).</summary>
        RunTeardown,

        /// <summary>A teardown is running and has not released the socket: the caller releases it now, with linger 0
        /// (the running routine then finds it released and records <see cref="CloseOutcome.Aborted"/>).</summary>
        ReleaseNow,
    }

    /// <summary>What releasing one reference requires of the caller.</summary>
    public enum ReleaseAction
    {
        /// <summary>Other owners remain: nothing else to do.</summary>
        None,

        /// <summary>That was the last reference and no teardown was running: the caller owns the teardown now.</summary>
        RunTeardown,

        /// <summary>That was the last reference and a teardown is already running (or done): wait for its result.</summary>
        WaitForCompletion,
    }

    private enum TeardownStage : byte
    {
        None,
        Running,
        Released,
        Recorded,
    }

    /// <summary>Where the connection is, as the application sees it.</summary>
    public ConnectionState State => _state;

    /// <summary>Whether the teardown has started (no new operation may start).</summary>
    public bool IsTearingDown => _state >= ConnectionState.Closing;

    /// <summary>Whether the socket has been released.</summary>
    public bool IsReleased => _state >= ConnectionState.Closed;

    /// <summary>The reason of the teardown (<see cref="CloseReason.None"/> while none was asked for).</summary>
    public CloseReason Reason
    {
        get
        {
            lock (this)
            {
                return _reason;
            }
        }
    }

    /// <summary>Whether the peer's FIN (or reset) was seen.</summary>
    public bool PeerFinSeen
    {
        get
        {
            lock (this)
            {
                return _peerFin;
            }
        }
    }

    /// <summary>Whether the peer reset the connection.</summary>
    public bool PeerResetSeen
    {
        get
        {
            lock (this)
            {
                return _peerReset;
            }
        }
    }

    /// <summary>Whether our send side is shut down.</summary>
    public bool SendShutdown
    {
        get
        {
            lock (this)
            {
                return _sendShutdown;
            }
        }
    }

    /// <summary>How many owners hold a reference.</summary>
    public int LeaseCount
    {
        get
        {
            lock (this)
            {
                return _leases;
            }
        }
    }

    /// <summary>The recorded result, or <see langword="null"/> before <see cref="Record"/>.</summary>
    public CloseResult? Result
    {
        get
        {
            lock (this)
            {
                return _stage == TeardownStage.Recorded ? _result : null;
            }
        }
    }

    /// <summary>Asks for the teardown. The first request wins and its caller must run the teardown routine.</summary>
    /// <remarks>Abort does not come here: it goes through <see cref="RequestAbort"/>, which may escalate.</remarks>
    /// <returns><see langword="true"/> if the caller now owns the teardown.</returns>
    public bool TryBeginTeardown(CloseReason reason)
    {
        (ConnectionState Before, ConnectionState After) change;
        lock (this)
        {
            if (_stage != TeardownStage.None)
            {
                return false;
            }

            _stage = TeardownStage.Running;
            _reason = reason;
            change = Publish();
        }

        _stateChanged(change.Before, change.After);
        return true;
    }

    /// <summary>Abort: escalates over any teardown that has not released the socket yet, unless the peer reset first.</summary>
    public AbortAction RequestAbort()
    {
        (ConnectionState Before, ConnectionState After) change;
        AbortAction action;
        lock (this)
        {
            switch (_stage)
            {
                case TeardownStage.None when _peerReset:
                    // The peer's reset is recorded and its teardown is being asked for: the connection is gone already.
                    return AbortAction.None;
                case TeardownStage.None:
                    _stage = TeardownStage.Running;
                    _reason = CloseReason.Abort;
                    action = AbortAction.RunTeardown;
                    break;
                case TeardownStage.Running when _peerReset:
                    // The peer already reset: the connection is gone, and recording our abort would hide the peer's reset.
                    return AbortAction.None;
                case TeardownStage.Running:
                    _reason = CloseReason.Abort;
                    action = AbortAction.ReleaseNow;
                    break;
                default:
                    return AbortAction.None;
            }

            change = Publish();
        }

        _stateChanged(change.Before, change.After);
        return action;
    }

    /// <summary>The one permission to dispose the socket; granted once, only while a teardown is running.</summary>
    /// <param name="abortive">Whether the release must reset (linger 0): the reason is Abort.</param>
    /// <returns><see langword="true"/> if the caller must dispose the socket now.</returns>
    public bool TryRelease(out bool abortive)
    {
        (ConnectionState Before, ConnectionState After) change;
        lock (this)
        {
            abortive = false;
            if (_stage != TeardownStage.Running)
            {
                return false;
            }

            _stage = TeardownStage.Released;
            _abortive = _reason == CloseReason.Abort;
            abortive = _abortive;
            change = Publish();
        }

        _stateChanged(change.Before, change.After);
        return true;
    }

    /// <summary>Records the result, once, after the release (<see cref="TryRelease"/> granted it). The outcome is <see cref="CloseOutcome.Aborted"/> exactly when
    /// the release was abortive, whatever <paramref name="outcome"/> the routine computed.</summary>
    /// <returns>The recorded result (the first one, if called twice).</returns>
    public CloseResult Record(CloseOutcome outcome, long bytesDrained, TimeSpan elapsed)
    {
        lock (this)
        {
            if (_stage != TeardownStage.Recorded)
            {
                _result = new CloseResult(_abortive ? CloseOutcome.Aborted : outcome, bytesDrained, elapsed);
                _stage = TeardownStage.Recorded;
            }

            return _result;
        }
    }

    /// <summary>Completes Completion with the recorded result; the owner calls it once it has reported the end.</summary>
    public void PublishResult()
    {
        TaskCompletionSource<CloseResult>? completion;
        CloseResult result;
        lock (this)
        {
            if (_stage != TeardownStage.Recorded || _published)
            {
                return;
            }

            _published = true;
            completion = _completion;
            result = _result;
        }

        completion?.TrySetResult(result);
    }

    /// <summary>Completion's task: completes with the one recorded result.</summary>
    public Task<CloseResult> GetCompletionTask()
    {
        lock (this)
        {
            if (_published)
            {
                return Task.FromResult(_result);
            }

            _completion ??= new TaskCompletionSource<CloseResult>(TaskCreationOptions.RunContinuationsAsynchronously);
            return _completion.Task;
        }
    }

    /// <summary>An application call asks for the result: the first such call gets it, later ones get <see cref="CloseOutcome.AlreadyClosed"/>.</summary>
    /// <returns><see langword="true"/> if this call is the first.</returns>
    public bool TryClaimResult()
    {
        lock (this)
        {
            if (_resultClaimed)
            {
                return false;
            }

            _resultClaimed = true;
            return true;
        }
    }

    /// <summary>The receive loop (or the kernel view) saw the peer's FIN.</summary>
    /// <returns><see langword="true"/> for the first time: the caller arms the CLOSE_WAIT guard and fires PeerClosed.</returns>
    public bool OnPeerFin()
    {
        (ConnectionState Before, ConnectionState After) change;
        lock (this)
        {
            if (_peerFin)
            {
                return false;
            }

            _peerFin = true;
            change = Publish();
        }

        _stateChanged(change.Before, change.After);
        return true;
    }

    /// <summary>The peer reset the connection (seen by a read, a send or the kernel view).</summary>
    /// <returns><see langword="true"/> for the first time.</returns>
    public bool OnPeerReset()
    {
        (ConnectionState Before, ConnectionState After) change;
        lock (this)
        {
            if (_peerReset)
            {
                return false;
            }

            _peerReset = true;
            _peerFin = true;
            change = Publish();
        }

        _stateChanged(change.Before, change.After);
        return true;
    }

    /// <summary>Our send side is about to be shut down.</summary>
    /// <returns><see langword="true"/> if the caller is the first and must call <c>Shutdown(Send)</c>.</returns>
    public bool TryMarkSendShutdown()
    {
        (ConnectionState Before, ConnectionState After) change;
        lock (this)
        {
            if (_sendShutdown || _stage >= TeardownStage.Released)
            {
                return false;
            }

            _sendShutdown = true;
            change = Publish();
        }

        _stateChanged(change.Before, change.After);
        return true;
    }

    /// <summary>Adds an owner.</summary>
    /// <returns><see langword="false"/> if the connection is tearing down or its last owner already let go.</returns>
    public bool TryAcquire()
    {
        lock (this)
        {
            if (_stage != TeardownStage.None || _leases == 0)
            {
                return false;
            }

            checked
            {
                _leases++;
            }

            return true;
        }
    }

    /// <summary>Releases the creator's reference (once; later calls are <see langword="null"/>).</summary>
    /// <returns>What the caller must do, or <see langword="null"/> if the creator's reference was already released.</returns>
    public ReleaseAction? ReleaseCreator()
    {
        lock (this)
        {
            if (_creatorReleased)
            {
                return null;
            }

            _creatorReleased = true;
        }

        return ReleaseReference();
    }

    /// <summary>Drops one reference; the last one takes the teardown in the same step, so no Acquire can slip in.</summary>
    public ReleaseAction ReleaseReference()
    {
        (ConnectionState Before, ConnectionState After) change;
        lock (this)
        {
            if (_leases == 0 || --_leases > 0)
            {
                return ReleaseAction.None;
            }

            if (_stage != TeardownStage.None)
            {
                return ReleaseAction.WaitForCompletion;
            }

            _stage = TeardownStage.Running;
            _reason = CloseReason.Application;
            change = Publish();
        }

        _stateChanged(change.Before, change.After);
        return ReleaseAction.RunTeardown;
    }

    /// <summary>Recomputes the published state from the fields; returns the change (for the state-change report, made
    /// after the lock is left). Under the lock.</summary>
    private (ConnectionState Before, ConnectionState After) Publish()
    {
        ConnectionState before = _state;
        _state = _stage switch
        {
            TeardownStage.Released or TeardownStage.Recorded => _abortive ? ConnectionState.Aborted : ConnectionState.Closed,
            TeardownStage.Running => ConnectionState.Closing,
            _ => (_sendShutdown, _peerFin) switch
            {
                (true, true) => ConnectionState.BothShutdown,
                (true, false) => ConnectionState.SendShutdown,
                (false, true) => ConnectionState.PeerShutdown,
                _ => ConnectionState.Open,
            },
        };
        return (before, _state);
    }
}
