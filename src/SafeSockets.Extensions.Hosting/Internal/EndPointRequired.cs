using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Options;

namespace SafeSockets.Extensions.Hosting.Internal;

/// <summary>A listener must know where to listen, on an address or a Unix socket; checked at start with the key that would say it.</summary>
internal sealed class EndPointRequired : IValidateOptions<HostedListenerOptions>
{
    private readonly string _name;

    public EndPointRequired(string name) => _name = name;

    public ValidateOptionsResult Validate(string? name, HostedListenerOptions options)
    {
        if (!string.Equals(name, _name, StringComparison.Ordinal))
        {
            return ValidateOptionsResult.Skip;
        }

        string key = $"{ConfigurationBinding.SectionPath(_name)}:EndPoint";
        return options.EndPoint switch
        {
            null => ValidateOptionsResult.Fail($"{key} is required: where the listener listens, such as \"127.0.0.1:7000\" (or HostedListenerOptions.EndPoint in code)."),
            IPEndPoint or UnixDomainSocketEndPoint => ValidateOptionsResult.Success,

            // Only code can set another kind (configuration parses to these two); caught here rather than as the
            // listener's ArgumentException at bind time, with the other validation failures.
            EndPoint other => ValidateOptionsResult.Fail($"{key} must be an IPEndPoint or a UnixDomainSocketEndPoint; got {other.GetType().Name} ({other}). Resolve a host name to an address first."),
        };
    }
}
