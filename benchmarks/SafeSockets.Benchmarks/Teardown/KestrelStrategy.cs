using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace SafeSockets.Benchmarks.Teardown;

/// <summary>Kestrel's socket transport as the server, hosted from the shared framework without a web host; the client is
/// the raw graceful client. Kestrel completes its input at the client's FIN; completing the output and disposing the
/// connection is its close (it does not drain).</summary>
internal sealed class KestrelTransport : Strategy
{
    public override string Name => "kestrel-transport";

    public override string Description => "Kestrel socket transport server (SocketTransportFactory, no web host); raw graceful client";

    public override IReadOnlyList<EndPoint> Start(int ports, CancellationToken stop)
    {
        var factory = new SocketTransportFactory(Options.Create(new SocketTransportOptions()), NullLoggerFactory.Instance);
        var endPoints = new List<EndPoint>();
        for (int i = 0; i < ports; i++)
        {
            IConnectionListener listener = factory.BindAsync(new IPEndPoint(IPAddress.Loopback, 0), stop).AsTask().GetAwaiter().GetResult();
            endPoints.Add(listener.EndPoint);
            stop.Register(() => _ = listener.UnbindAsync().AsTask());
            _ = AcceptKestrelAsync(listener, stop);
        }

        return endPoints;
    }

    public override Task RunClientAsync(EndPoint server, CancellationToken cancellationToken) => RawGracefulClientAsync(server, cancellationToken);

    protected override Task RunServerAsync(Socket accepted) => Task.CompletedTask;

    private async Task AcceptKestrelAsync(IConnectionListener listener, CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            ConnectionContext? connection;
            try
            {
                connection = await listener.AcceptAsync(stop);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                return;
            }

            if (connection is null)
            {
                return;
            }

            _ = ServeKestrelAsync(connection);
        }
    }

    private async Task ServeKestrelAsync(ConnectionContext connection)
    {
        EnterServe();
        try
        {
            PipeReader input = connection.Transport.Input;
            ReadResult request = await input.ReadAtLeastAsync(RequestBytes);
            input.AdvanceTo(request.Buffer.GetPosition(Math.Min(RequestBytes, request.Buffer.Length)));
            await connection.Transport.Output.WriteAsync(Response);
            while (true)
            {
                ReadResult result = await input.ReadAsync();
                input.AdvanceTo(result.Buffer.End);
                if (result.IsCompleted || result.IsCanceled)
                {
                    break;
                }
            }

            await input.CompleteAsync();
            await connection.Transport.Output.CompleteAsync();
        }
        catch (Microsoft.AspNetCore.Connections.ConnectionResetException)
        {
            Observed.Reset();
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or InvalidOperationException)
        {
        }
        finally
        {
            await connection.DisposeAsync();
            ExitServe();
        }
    }
}
