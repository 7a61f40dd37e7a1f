using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using SafeSockets.Extensions.Hosting.Internal;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Extensions.Hosting.Tests.Infrastructure;

/// <summary>Generic hosts with one listener named <see cref="Name"/> on a loopback port the kernel picks (port 0).</summary>
internal static class TestHosts
{
    public const string Name = "echo";

    public const string Section = "SafeSockets:Listeners:echo";

    /// <summary>A host builder with no default sources: only <paramref name="settings"/> (keys under <see cref="Section"/>; a
    /// null value removes the key) and the listener's end point, 127.0.0.1:0.</summary>
    public static HostApplicationBuilder Builder(params (string Key, string? Value)[] settings)
    {
        HostApplicationBuilder builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true, Args = [] });
        var values = new Dictionary<string, string?> { [$"{Section}:EndPoint"] = "127.0.0.1:0" };
        foreach ((string key, string? value) in settings)
        {
            if (value is null)
            {
                values.Remove($"{Section}:{key}");
            }
            else
            {
                values[$"{Section}:{key}"] = value;
            }
        }

        builder.Configuration.AddInMemoryCollection(values);
        builder.Services.AddLogging();
        builder.Services.AddMetrics();
        builder.Services.AddSingleton<Recorder>();
        return builder;
    }

    /// <summary>Builds and starts a host whose listener serves with <typeparamref name="THandler"/>; <paramref name="configure"/>
    /// adds to the builder first (services, host options).</summary>
    public static async Task<IHost> StartAsync<THandler>(Action<HostApplicationBuilder>? configure = null, params (string Key, string? Value)[] settings)
        where THandler : class, IConnectionHandler
    {
        HostApplicationBuilder builder = Builder(settings);
        builder.Services.AddManagedListener<THandler>(Name);
        configure?.Invoke(builder);
        IHost host = builder.Build();
        try
        {
            await host.StartAsync().WithTimeout();
            return host;
        }
        catch
        {
            host.Dispose();
            throw;
        }
    }

    /// <summary>What the host's handlers saw.</summary>
    public static Recorder RecorderOf(IHost host) => host.Services.GetRequiredService<Recorder>();

    /// <summary>The port the started listener took.</summary>
    public static IPEndPoint EndPointOf(IHost host, string name = Name) =>
        (IPEndPoint)ServiceOf(host, name).LocalEndPoint!;

    /// <summary>The hosted service of the listener named <paramref name="name"/>.</summary>
    public static ManagedListenerService ServiceOf(IHost host, string name = Name) =>
        host.Services.GetServices<IHostedService>().OfType<ManagedListenerService>().Single(s => s.Name == name);

    /// <summary>Adds a second listener's section (<c>SafeSockets:Listeners:{name}</c>) with its end point, 127.0.0.1:0, and
    /// <paramref name="settings"/> (keys under that section).</summary>
    public static void AddListenerSection(HostApplicationBuilder builder, string name, params (string Key, string? Value)[] settings)
    {
        var values = new Dictionary<string, string?> { [$"SafeSockets:Listeners:{name}:EndPoint"] = "127.0.0.1:0" };
        foreach ((string key, string? value) in settings)
        {
            values[$"SafeSockets:Listeners:{name}:{key}"] = value;
        }

        builder.Configuration.AddInMemoryCollection(values);
    }

    /// <summary>How a connection attempt to <paramref name="endPoint"/> ends: <see cref="SocketError.Success"/> if something
    /// accepted it (the kernel completed the handshake), else the error (ConnectionRefused when nothing listens).</summary>
    public static async Task<SocketError> TryConnectAsync(IPEndPoint endPoint)
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            await socket.ConnectAsync(endPoint).WithTimeout();
            return SocketError.Success;
        }
        catch (SocketException ex)
        {
            return ex.SocketErrorCode;
        }
    }

    /// <summary>A raw peer connected to the host's listener, its connection already handed to a handler (it echoed a byte).</summary>
    public static Task<Socket> ConnectEchoedAsync(IHost host) => ConnectEchoedAsync(EndPointOf(host));

    /// <summary>A raw peer connected to <paramref name="endPoint"/>, its connection already handed to a handler (it echoed a byte).</summary>
    public static async Task<Socket> ConnectEchoedAsync(IPEndPoint endPoint)
    {
        var peer = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await peer.ConnectAsync(endPoint).WithTimeout();
            await peer.SendAsync(new byte[] { 42 }, SocketFlags.None).WithTimeout();
            byte[] echo = new byte[1];
            int n = await peer.ReceiveAsync(echo, SocketFlags.None).WithTimeout();
            Assert.Equal(1, n);
            Assert.Equal(42, echo[0]);
            return peer;
        }
        catch
        {
            peer.Dispose();
            throw;
        }
    }
}
