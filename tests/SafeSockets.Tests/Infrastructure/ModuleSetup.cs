using System.Runtime.CompilerServices;

namespace SafeSockets.Tests.Infrastructure;

internal static class ModuleSetup
{
    /// <summary>Turns on leaked-lease tracking (on by default only in debug builds of the library) before any lease exists.</summary>
    [ModuleInitializer]
    internal static void Initialize() => AppContext.SetSwitch("SafeSockets.TrackLeakedLeases", true);
}
