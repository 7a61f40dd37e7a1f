using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace SafeSockets.Diagnostics;

/// <summary>The tags of one kind of connection, in OpenTelemetry's conventions (as Kestrel's <c>kestrel.*</c>):
/// <c>network.transport</c>, <c>network.type</c>, <c>server.address</c> and <c>server.port</c> where known. Made before any
/// connection (statics for connections without a listener, one set per listener), so recording allocates nothing.</summary>
internal sealed class ConnectionTags
{
    private const string OutcomeTagName = "outcome";
    private const string ErrorTypeTagName = "error.type";

    // CloseOutcome's values in snake_case, indexed by the enum.
    private static readonly string[] s_outcomeNames =
    [
        "graceful", "drain_timed_out", "drain_limit_exceeded", "peer_reset", "aborted", "already_closed",
        "close_wait_timed_out", "drain_budget_exceeded", "faulted", "idle_timed_out", "peer_unreachable",
    ];

    private static readonly ConnectionTags s_tcp4 = new("tcp", "ipv4", null, null);
    private static readonly ConnectionTags s_tcp6 = new("tcp", "ipv6", null, null);
    private static readonly ConnectionTags s_unix = new("unix", null, null, null);

    // Per outcome: the common tags, outcome, and error.type for every end but a graceful one.
    private readonly KeyValuePair<string, object?>[][] _ended;

    private ConnectionTags(string transport, string? networkType, string? serverAddress, int? serverPort)
    {
        var common = new List<KeyValuePair<string, object?>>(4) { new("network.transport", transport) };
        if (networkType is not null)
        {
            common.Add(new("network.type", networkType));
        }

        if (serverAddress is not null)
        {
            common.Add(new("server.address", serverAddress));
        }

        if (serverPort is not null)
        {
            common.Add(new("server.port", serverPort.Value));
        }

        Common = [.. common];
        _ended = new KeyValuePair<string, object?>[s_outcomeNames.Length][];
        for (int i = 0; i < s_outcomeNames.Length; i++)
        {
            var outcome = new KeyValuePair<string, object?>(OutcomeTagName, s_outcomeNames[i]);
            _ended[i] = i == (int)CloseOutcome.Graceful
                ? [.. Common, outcome]
                : [.. Common, outcome, new(ErrorTypeTagName, s_outcomeNames[i])];
        }
    }

    /// <summary>The tags every instrument of a connection carries.</summary>
    public KeyValuePair<string, object?>[] Common { get; }

    /// <summary>The tags of a connection's end: <see cref="Common"/>, <c>outcome</c>, and <c>error.type</c> unless graceful.</summary>
    public KeyValuePair<string, object?>[] Ended(CloseOutcome outcome) => _ended[(int)outcome];

    /// <summary>Tags for a connection with no listener (connected or adopted): transport and network type, no server.</summary>
    public static ConnectionTags ForClient(AddressFamily socketFamily, EndPoint? remote) =>
        socketFamily == AddressFamily.Unix ? s_unix : IsIPv4(socketFamily, remote) ? s_tcp4 : s_tcp6;

    /// <summary>Whether a connection runs over IPv4 (a dual-mode socket's IPv4 peer is reported unmapped, as IPv4).</summary>
    public static bool IsIPv4(AddressFamily socketFamily, EndPoint? remote) =>
        remote?.AddressFamily == AddressFamily.InterNetwork || (remote is null && socketFamily == AddressFamily.InterNetwork);

    /// <summary>The tags of a listener's connections, one set per network type it can accept (a dual-mode listener takes both).</summary>
    public static (ConnectionTags IPv4, ConnectionTags IPv6) ForListener(EndPoint local)
    {
        switch (local)
        {
            case IPEndPoint ip:
                string address = ip.Address.ToString();
                return (new ConnectionTags("tcp", "ipv4", address, ip.Port), new ConnectionTags("tcp", "ipv6", address, ip.Port));
            case UnixDomainSocketEndPoint unix:
                var tags = new ConnectionTags("unix", null, unix.ToString(), null);
                return (tags, tags);
            default:
                string? other = Convert.ToString(local, CultureInfo.InvariantCulture);
                var unknown = new ConnectionTags("tcp", null, other, null);
                return (unknown, unknown);
        }
    }
}
