using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Diagnosers;
using BenchmarkDotNet.Running;

namespace SafeSockets.Benchmarks;

internal static class Program
{
    public static int Main(string[] args)
    {
        switch (args.Length > 0 ? args[0] : "")
        {
            case "teardown":
                return Teardown.TeardownCommand.RunAsync(args[1..]).GetAwaiter().GetResult();
            case "soak":
                return Teardown.ReliabilityCommands.SoakAsync(args[1..]).GetAwaiter().GetResult();
            case "idle":
                return Teardown.ReliabilityCommands.IdleAsync(args[1..]).GetAwaiter().GetResult();
            case "fin-latency":
                return Teardown.FinLatencyCommand.RunAsync(args[1..]).GetAwaiter().GetResult();
            case "hotpath":
                return Teardown.HotPathCommand.RunAsync(args[1..]).GetAwaiter().GetResult();
            case "hotpath-run":
                return Teardown.HotPathCommand.RunOneAsync(args[1..]).GetAwaiter().GetResult();
            case "proxy":
                return Teardown.ProxyCommand.RunAsync(args[1..]).GetAwaiter().GetResult();
            case "proxy-run":
                return Teardown.ProxyCommand.RunRoundAsync(args[1..]).GetAwaiter().GetResult();
            case "alloc":
                return Teardown.AllocCommand.RunAsync(args[1..]).GetAwaiter().GetResult();
            case "idle-peers":
                return Teardown.ReliabilityCommands.IdlePeersAsync(args[1..]).GetAwaiter().GetResult();
        }

        IConfig config = DefaultConfig.Instance.AddDiagnoser(MemoryDiagnoser.Default);
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args, config);
        return 0;
    }
}
