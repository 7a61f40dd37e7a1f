using Microsoft.Extensions.Options;

namespace SafeSockets.Extensions.Hosting.Internal;

/// <summary>A listener must know where to listen; checked at start with the key that would say it.</summary>
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

        return options.EndPoint is null
            ? ValidateOptionsResult.Fail($"{ConfigurationBinding.SectionPath(_name)}:EndPoint is required: where the listener listens, such as \"127.0.0.1:7000\" (or HostedListenerOptions.EndPoint in code).")
            : ValidateOptionsResult.Success;
    }
}
