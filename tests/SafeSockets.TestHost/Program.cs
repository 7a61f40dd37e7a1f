using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Net;
using System.Net.Sockets;
using SafeSockets;

// Run inside a private network namespace (`unshare -n`): brings the namespace's loopback up, connects a ManagedConnection
// to a raw peer on it, then takes the loopback link down so the peer vanishes without FIN or RST, and reports what the
// connection did. One line per fact, "key=value"; exit code 0 when the run itself worked (the test judges the facts).
if (args is ["blocking-reader"])
{
    return await BlockingReader.RunAsync();
}

if (args is ["inline-reader"])
{
    return await InlineReader.RunAsync();
}

if (args is ["exit-with-connections-open"])
{
    return await ExitWithConnectionsOpen.RunAsync();
}

if (args is not ["vanished-peer"])
{
    Console.Error.WriteLine("usage: SafeSockets.TestHost vanished-peer   (inside `unshare -n`, as root)");
    Console.Error.WriteLine("       SafeSockets.TestHost blocking-reader");
    Console.Error.WriteLine("       SafeSockets.TestHost inline-reader");
    Console.Error.WriteLine("       SafeSockets.TestHost exit-with-connections-open");
    return 2;
}

Ip("link set lo up");
using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
listener.Listen(1);
Task<Socket> accept = listener.AcceptAsync();

// What an operator would see: the log events and the closed-connections counter's outcome tag.
var logger = new EventIdLogger();
string? closedOutcomeTag = null;
using var meters = new MeterListener();
meters.InstrumentPublished = (instrument, listener) =>
{
    if (instrument.Meter.Name == "SafeSockets" && instrument.Name == "safesockets.connections.closed")
    {
        listener.EnableMeasurementEvents(instrument);
    }
};
meters.SetMeasurementEventCallback<long>((_, _, tags, _) =>
{
    foreach (KeyValuePair<string, object?> tag in tags)
    {
        if (tag.Key == "outcome")
        {
            closedOutcomeTag = tag.Value as string;
        }
    }
});
meters.Start();

var options = new ManagedConnectionOptions
{
    Logger = logger,
    KeepAliveTime = TimeSpan.FromSeconds(1),
    KeepAliveInterval = TimeSpan.FromSeconds(1),
    KeepAliveRetryCount = 2,
};
await using ManagedConnection connection = await ManagedConnection.ConnectAsync(listener.LocalEndPoint!, options);
using Socket peer = await accept;

// Both ends are up: one byte each way proves it.
await connection.SendAsync(new byte[] { 1 });
byte[] one = new byte[1];
await peer.ReceiveAsync(one, SocketFlags.None);
await peer.SendAsync(one, SocketFlags.None);
Console.WriteLine($"received={await connection.ReceiveAsync(one)}");

// The peer vanishes: no FIN, no RST ever reaches us.
var peerClosed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
connection.PeerClosed.Register(() => peerClosed.TrySetResult());
var clock = Stopwatch.StartNew();
Ip("link set lo down");

// A read pending on the connection is told how it ended; nothing waits for the application to close.
Task<int> pendingRead = connection.ReceiveAsync(new byte[16]).AsTask();
Task finished = connection.Completion.WaitAsync(TimeSpan.FromSeconds(60));
try
{
    CloseResult result = await connection.Completion.WaitAsync(TimeSpan.FromSeconds(60));
    Console.WriteLine($"outcome={result.Outcome}");
    Console.WriteLine($"seconds={clock.Elapsed.TotalSeconds:F1}");
}
catch (TimeoutException)
{
    Console.WriteLine("outcome=none-after-60s");
}

Console.WriteLine($"peerClosed={await Task.WhenAny(peerClosed.Task, Task.Delay(TimeSpan.FromSeconds(10))) == peerClosed.Task}");
Console.WriteLine($"state={connection.State}");
try
{
    await pendingRead.WaitAsync(TimeSpan.FromSeconds(10));
    Console.WriteLine("pendingRead=completed");
}
catch (Exception ex)
{
    Console.WriteLine($"pendingRead={ex.GetType().Name}");
}

try
{
    await connection.SendAsync(new byte[] { 2 });
    Console.WriteLine("laterSend=completed");
}
catch (Exception ex)
{
    Console.WriteLine($"laterSend={ex.GetType().Name}");
}

await finished;
Console.WriteLine($"metricOutcome={closedOutcomeTag}");
Console.WriteLine($"logEvents={string.Join(',', logger.Events)}");
return 0;

static void Ip(string arguments)
{
    using Process ip = Process.Start(new ProcessStartInfo("ip", arguments) { UseShellExecute = false })!;
    ip.WaitForExit();
    if (ip.ExitCode != 0)
    {
        throw new InvalidOperationException($"ip {arguments} exited with {ip.ExitCode}");
    }
}

/// <summary>Records the event ids the library logs.</summary>
internal sealed class EventIdLogger : Microsoft.Extensions.Logging.ILogger
{
    private readonly System.Collections.Concurrent.ConcurrentQueue<int> _events = new();

    public IEnumerable<int> Events => _events;

    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public bool IsEnabled(Microsoft.Extensions.Logging.LogLevel logLevel) => true;

    public void Log<TState>(Microsoft.Extensions.Logging.LogLevel logLevel, Microsoft.Extensions.Logging.EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
        _events.Enqueue(eventId.Id);
}
