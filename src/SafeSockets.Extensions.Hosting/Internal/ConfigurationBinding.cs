using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Options;

namespace SafeSockets.Extensions.Hosting.Internal;

/// <summary>Binds one listener's configuration section (<c>SafeSockets:Listeners:{name}</c>) onto its options.</summary>
/// <remarks>By hand rather than with the reflection binder: the core's setters check every value, and the binder would
/// report a refused value as a bare <c>TargetInvocationException</c> without its key. Here every refused value, every value
/// that does not parse and every unknown key becomes one failure naming the full key and the rule, and all of them are
/// reported at once (as an <see cref="OptionsValidationException"/>, which <c>ValidateOnStart</c> turns into a failed
/// start). No reflection, so trimming and AOT keep working.</remarks>
internal sealed class ConfigurationBinding : IConfigureNamedOptions<HostedListenerOptions>
{
    private const string ConnectionKey = "Connection";
    private const string EndPointKey = "EndPoint";

    private static readonly Dictionary<string, Action<ManagedListenerOptions, string>> s_listenerKeys = new(StringComparer.OrdinalIgnoreCase)
    {
        ["Backlog"] = static (o, v) => o.Backlog = ParseInt(v),
        ["MaxConnections"] = static (o, v) => o.MaxConnections = ParseInt(v),
        ["MaxDrainingConnections"] = static (o, v) => o.MaxDrainingConnections = ParseInt(v),
    };

    private static readonly Dictionary<string, Action<ManagedConnectionOptions, string>> s_connectionKeys = new(StringComparer.OrdinalIgnoreCase)
    {
        ["DrainTimeout"] = static (o, v) => o.DrainTimeout = ParseTimeSpan(v),
        ["DrainIdleTimeout"] = static (o, v) => o.DrainIdleTimeout = ParseTimeSpan(v),
        ["MaxDrainBytes"] = static (o, v) => o.MaxDrainBytes = ParseLong(v),
        ["CloseWaitTimeout"] = static (o, v) => o.CloseWaitTimeout = ParseTimeSpan(v),
        ["IdleTimeout"] = static (o, v) => o.IdleTimeout = ParseTimeSpan(v),
        ["KeepAliveTime"] = static (o, v) => o.KeepAliveTime = ParseTimeSpan(v),
        ["KeepAliveInterval"] = static (o, v) => o.KeepAliveInterval = ParseTimeSpan(v),
        ["KeepAliveRetryCount"] = static (o, v) => o.KeepAliveRetryCount = ParseInt(v),
        ["MaxInputBufferSize"] = static (o, v) => o.MaxInputBufferSize = ParseInt(v),
        ["MaxOutputBufferSize"] = static (o, v) => o.MaxOutputBufferSize = ParseInt(v),
        ["WaitForDataBeforeAllocatingBuffer"] = static (o, v) => o.WaitForDataBeforeAllocatingBuffer = ParseBool(v),
        ["UnsafePreferInlineScheduling"] = static (o, v) => o.UnsafePreferInlineScheduling = ParseBool(v),
    };

    private readonly string _name;
    private readonly IConfiguration? _configuration;

    public ConfigurationBinding(string name, IConfiguration? configuration)
    {
        _name = name;
        _configuration = configuration;
    }

    /// <summary>The section of a listener's settings.</summary>
    public static string SectionPath(string name) => ConfigurationPath.Combine(HostedListenerOptions.ConfigurationSection, name);

    public void Configure(HostedListenerOptions options) => Configure(Options.DefaultName, options);

    public void Configure(string? name, HostedListenerOptions options)
    {
        if (!string.Equals(name, _name, StringComparison.Ordinal))
        {
            return;
        }

        // The code's configure ran before: bind into a copy of what it set, never into its objects (several listeners
        // given one ManagedConnectionOptions would otherwise get each other's configuration).
        options.Listener = OptionsCopy.Of(options.Listener);
        if (_configuration is null)
        {
            return;
        }

        List<string> failures = Bind(_configuration.GetSection(SectionPath(_name)), options);
        if (failures.Count != 0)
        {
            throw new OptionsValidationException(_name, typeof(HostedListenerOptions), failures);
        }
    }

    /// <summary>Applies every key of <paramref name="section"/> it can, and returns a failure for each one it cannot.</summary>
    internal static List<string> Bind(IConfigurationSection section, HostedListenerOptions options)
    {
        var failures = new List<string>();
        foreach (IConfigurationSection child in section.GetChildren())
        {
            if (string.Equals(child.Key, EndPointKey, StringComparison.OrdinalIgnoreCase))
            {
                Apply(child, options, static (o, v) => o.EndPoint = ParseEndPoint(v), failures);
            }
            else if (string.Equals(child.Key, ConnectionKey, StringComparison.OrdinalIgnoreCase))
            {
                if (child.Value is not null)
                {
                    failures.Add($"{child.Path} must be a section of connection settings ({Known(s_connectionKeys)}), not a value.");
                    continue;
                }

                foreach (IConfigurationSection setting in child.GetChildren())
                {
                    ApplyKnown(setting, options.Listener.Connection, s_connectionKeys, "connection", failures);
                }
            }
            else
            {
                ApplyKnown(child, options.Listener, s_listenerKeys, "listener", failures);
            }
        }

        return failures;
    }

    private static void ApplyKnown<T>(IConfigurationSection setting, T target, Dictionary<string, Action<T, string>> keys, string what, List<string> failures)
    {
        if (keys.TryGetValue(setting.Key, out Action<T, string>? apply))
        {
            Apply(setting, target, apply, failures);
            return;
        }

        string known = what == "listener" ? $"{EndPointKey}, {Known(s_listenerKeys)}, {ConnectionKey}" : Known(s_connectionKeys);
        failures.Add($"{setting.Path} is not a SafeSockets {what} setting (known: {known}).");
    }

    private static void Apply<T>(IConfigurationSection setting, T target, Action<T, string> apply, List<string> failures)
    {
        if (setting.Value is null)
        {
            // A key present without a value (null in an in-memory source) is absent; a section where a value belongs is not.
            if (setting.GetChildren().Any())
            {
                failures.Add($"{setting.Path} must be a value, not a section.");
            }

            return;
        }

        try
        {
            apply(target, setting.Value);
        }
        catch (FormatException ex)
        {
            failures.Add($"{setting.Path} = '{setting.Value}' {ex.Message}");
        }
        catch (ArgumentOutOfRangeException ex)
        {
            // The core's own rule ("DrainTimeout must be greater than zero."), without the parameter and value lines the
            // exception appends: the key and the value are said here.
            failures.Add($"{setting.Path} = '{setting.Value}' is out of range: {Rule(ex)}");
        }
    }

    private static string Rule(ArgumentException ex)
    {
        string message = ex.Message;
        int end = message.IndexOf(" (Parameter '", StringComparison.Ordinal);
        if (end < 0)
        {
            end = message.IndexOf('\n', StringComparison.Ordinal);
        }

        return end < 0 ? message : message[..end];
    }

    private static string Known<T>(Dictionary<string, Action<T, string>> keys) => string.Join(", ", keys.Keys);

    private const string TimeSpanFormat = "write hh:mm:ss such as \"00:00:30\" (d.hh:mm:ss for days, hh:mm:ss.fff for fractions), or \"Infinite\" where allowed.";

    /// <summary>Exactly <c>[d.]hh:mm:ss[.fffffff]</c> (TimeSpan's invariant "c" format, hours, minutes and seconds all
    /// written), or the word <c>Infinite</c>. TimeSpan.Parse would take "5" as five days and "-00:00:00.001" as
    /// <see cref="Timeout.InfiniteTimeSpan"/> (minus one millisecond); neither is what anyone writing them meant.</summary>
    private static TimeSpan ParseTimeSpan(string value)
    {
        string text = value.Trim();
        if (string.Equals(text, "Infinite", StringComparison.OrdinalIgnoreCase))
        {
            return Timeout.InfiniteTimeSpan;
        }

        // Hours, minutes and seconds all written (two ':'), else "c" would still read "5" as days and "1:30" as hh:mm.
        if (text.Count(c => c == ':') != 2 || !TimeSpan.TryParseExact(text, "c", CultureInfo.InvariantCulture, out TimeSpan parsed))
        {
            throw new FormatException("is not a time span: " + TimeSpanFormat);
        }

        return parsed < TimeSpan.Zero ? throw new FormatException("is negative: " + TimeSpanFormat) : parsed;
    }

    private static int ParseInt(string value) =>
        int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int parsed)
            ? parsed
            : throw new FormatException($"is not a whole number from {int.MinValue} to {int.MaxValue}.");

    private static bool ParseBool(string value) =>
        bool.TryParse(value, out bool parsed)
            ? parsed
            : throw new FormatException("is not true or false.");

    private static long ParseLong(string value) =>
        long.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out long parsed)
            ? parsed
            : throw new FormatException("is not a whole number.");

    private static EndPoint ParseEndPoint(string value)
    {
        const string UnixPrefix = "unix:";
        if (value.StartsWith(UnixPrefix, StringComparison.OrdinalIgnoreCase) && value.Length > UnixPrefix.Length)
        {
            return new UnixDomainSocketEndPoint(value[UnixPrefix.Length..]);
        }

        // A port is required: IPEndPoint.TryParse would take "127.0.0.1" as port 0, a port nobody meant.
        bool hasPort = value.StartsWith('[') ? value.Contains("]:", StringComparison.Ordinal) : value.Count(c => c == ':') == 1;
        return hasPort && IPEndPoint.TryParse(value, out IPEndPoint? endPoint)
            ? endPoint
            : throw new FormatException("is not an end point: write an IP address and port such as \"127.0.0.1:7000\", \"0.0.0.0:7000\" or \"[::]:7000\" (port 0 picks a free port), or \"unix:/path/to/socket\".");
    }
}
