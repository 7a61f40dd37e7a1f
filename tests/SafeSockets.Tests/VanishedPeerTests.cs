using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>A peer that vanishes without FIN or RST (power loss, a dropped NAT entry), for real: in a private network
/// namespace made for the run (`unshare -n`, as root), the loopback link is taken down under an established connection.
/// With keep-alive at 1 s / 1 s / 2 probes the kernel gives up after about 3 s and the connection ends by itself.</summary>
[Collection(ExclusiveTests.Name)] // starts a process: between its fork and exec the child holds a copy of every descriptor, delaying other tests' closes (session 13)
public sealed class VanishedPeerTests
{
    [Fact]
    public async Task PeerVanishes_KeepAliveGivesUp_ConnectionEndsByItselfAsPeerUnreachable()
    {
        if (!OperatingSystem.IsLinux())
        {
            return; // network namespaces are Linux's; CI runs on Linux as root and runs this test
        }

        Dictionary<string, string> facts = await TestHostProcess.RunAsync(["vanished-peer"], unshare: true);

        Assert.Equal("1", facts["received"]);
        Assert.Equal(nameof(CloseOutcome.PeerUnreachable), facts["outcome"]);
        Assert.Equal("True", facts["peerClosed"]);
        Assert.Equal(nameof(ConnectionState.Closed), facts["state"]);
        Assert.Equal(nameof(PeerUnreachableException), facts["pendingRead"]);
        Assert.Equal(nameof(PeerUnreachableException), facts["laterSend"]);
        Assert.Equal("peer_unreachable", facts["metricOutcome"]);
        Assert.Contains("11", facts["logEvents"].Split(','));

        // 1 s idle + 2 probes 1 s apart: about 3 s; well under the 60 s the host waits.
        double seconds = double.Parse(facts["seconds"], System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(seconds, 1.0, 30.0);
    }
}
