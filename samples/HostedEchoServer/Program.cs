// HostedEchoServer: the echo server on the .NET Generic Host, with SafeSockets.Extensions.Hosting.
// Settings come from appsettings.json (SafeSockets:Listeners:echo), overridable on the command line or by environment:
//   dotnet run --project samples/HostedEchoServer
//   dotnet run --project samples/HostedEchoServer -- --SafeSockets:Listeners:echo:EndPoint=127.0.0.1:0
// Ctrl+C or SIGTERM (kill -TERM <pid>, `docker stop`, systemd) stops it gracefully: no new connections, every handler's
// `stopping` token is cancelled, each connection gets FIN when its handler returns, and only those still open after
// HostOptions:ShutdownTimeout (10 s here) are aborted. OpenTelemetry's console exporter
// prints the SafeSockets metrics every Metrics:ExportIntervalMilliseconds, and once more at the stop.
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using SafeSockets;
using SafeSockets.Diagnostics;
using SafeSockets.Extensions.Hosting;

// Content root = the program's folder, so appsettings.json is found whatever the working directory.
HostApplicationBuilder builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { Args = args, ContentRootPath = AppContext.BaseDirectory });
builder.Services.Configure<HostOptions>(builder.Configuration.GetSection("HostOptions"));
builder.Services.AddManagedListener<EchoHandler>("echo");

int exportInterval = builder.Configuration.GetValue("Metrics:ExportIntervalMilliseconds", 10_000);
builder.Services.AddOpenTelemetry()
    .ConfigureResource(resource => resource.AddService("HostedEchoServer"))
    .WithMetrics(metrics => metrics
        .AddMeter(SafeSocketsMetrics.MeterName)
        .AddConsoleExporter((_, reader) => reader.PeriodicExportingMetricReaderOptions.ExportIntervalMilliseconds = exportInterval));

await builder.Build().RunAsync();
Console.WriteLine("stopped");

/// <summary>Echoes until the peer's FIN or the host's stop; the listener then closes the connection gracefully.</summary>
internal sealed class EchoHandler : IConnectionHandler
{
    public async ValueTask HandleAsync(ManagedConnection connection, CancellationToken stopping)
    {
        byte[] buffer = new byte[16 * 1024];
        int n;
        while ((n = await connection.ReceiveAsync(buffer, stopping)) > 0)
        {
            await connection.SendAsync(buffer.AsMemory(0, n), stopping);
        }
    }
}
