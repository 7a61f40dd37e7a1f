using System.IO.Pipelines;
using Microsoft.Extensions.ObjectPool;

namespace SafeSockets.Internal;

/// <summary>A bounded pool of input pipes that share one set of options; a pipe is reset on return and refused if it cannot be.</summary>
/// <remarks>A connection returns its pipe only when it alone completed both ends (the close path completed the reader
/// while no <c>ReceiveAsync</c> was running, and the receive loop had ended), so a returned pipe has no other user.</remarks>
internal sealed class InputPipePool
{
    // Enough for a few hundred connections closing at once; beyond that pipes are simply collected.
    private const int MaximumRetained = 512;

    private readonly DefaultObjectPool<Pipe> _pool;

    public InputPipePool(PipeOptions options) => _pool = new DefaultObjectPool<Pipe>(new Policy(options), MaximumRetained);

    public Pipe Rent() => _pool.Get();

    public void Return(Pipe pipe) => _pool.Return(pipe);

    private sealed class Policy(PipeOptions options) : PooledObjectPolicy<Pipe>
    {
        public override Pipe Create() => new(options);

        public override bool Return(Pipe obj)
        {
            try
            {
                obj.Reset();
                return true;
            }
            catch (InvalidOperationException)
            {
                // A reader or writer is still active: never hand it to another connection.
                return false;
            }
        }
    }
}
