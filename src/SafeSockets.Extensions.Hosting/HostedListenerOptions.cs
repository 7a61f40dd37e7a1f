using System.Net;

namespace SafeSockets.Extensions.Hosting;

/// <summary>Settings of one hosted listener: where it listens, and the listener and connection options.</summary>
/// <remarks>
/// <para>Named options (the name given to <c>AddManagedListener</c>), bound from the configuration section
/// <c>SafeSockets:Listeners:{name}</c> after the code's <c>configure</c> action, so configuration wins. Keys:
/// <c>EndPoint</c>, <c>Backlog</c>, <c>MaxConnections</c>, <c>MaxDrainingConnections</c> and <c>Connection:*</c> (every
/// <see cref="ManagedConnectionOptions"/> value; time spans as <c>"00:00:05"</c>, or <c>"Infinite"</c>).</para>
/// <para>Validated when the host starts: a bad value stops it with an <c>OptionsValidationException</c> that names the key
/// and the rule.</para>
/// </remarks>
public sealed class HostedListenerOptions
{
    /// <summary>The configuration section under which each listener's section is named: <c>SafeSockets:Listeners</c>.</summary>
    public const string ConfigurationSection = "SafeSockets:Listeners";

    private ManagedListenerOptions _listener = new();

    /// <summary>Where the listener listens: an <see cref="IPEndPoint"/> (port 0 picks a free one) or a Unix domain socket end point.</summary>
    /// <remarks>Required. In configuration: <c>"127.0.0.1:7000"</c>, <c>"[::]:7000"</c> (dual mode) or <c>"unix:/run/app.sock"</c>.</remarks>
    public EndPoint? EndPoint { get; set; }

    /// <summary>The listener's options, with the options of every accepted connection in <see cref="ManagedListenerOptions.Connection"/>.</summary>
    /// <remarks>Defaults to the documented defaults. Unless set, the host fills in its logger factory's <c>SafeSockets</c>
    /// logger and its <c>IMeterFactory</c>. The listener's options are a copy of the object set here (and of its
    /// <see cref="ManagedListenerOptions.Connection"/>), made before configuration is bound: one object may be given to
    /// several listeners, and neither configuration nor the host writes into it.</remarks>
    /// <exception cref="ArgumentNullException">The value is null.</exception>
    public ManagedListenerOptions Listener
    {
        get => _listener;
        set
        {
            ArgumentNullException.ThrowIfNull(value, nameof(Listener));
            _listener = value;
        }
    }
}
