using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;

namespace SafeSockets.Benchmarks.Teardown;

/// <summary><c>proxy</c>: the half-close proxy (samples/HalfCloseProxy) on SafeSockets, the same proxy on raw sockets, and
/// nginx's stream proxy (<c>proxy_half_close on</c>), each between a real HTTP client and a real HTTP server that nobody
/// here wrote: ApacheBench (<c>ab</c>, a new connection per request) against nginx serving a fixed answer.</summary>
/// <remarks>Each round is a fresh process in a fresh network namespace (<c>unshare -n</c>, loopback only: its own TIME_WAIT
/// table and reset counters), running the three proxies one after the other; ratios are taken within a round, then the
/// median over rounds. The proxy's CPU per request is its process's (ours) or its workers' (nginx) CPU time over the run.</remarks>
internal static partial class ProxyCommand
{
    private const string Usage = """
        proxy [options]
          --requests N      requests per proxy per round (default 10000)
          --warmup W        requests per proxy before the measured ones (default 10000: until the JIT has settled)
          --inline          every proxy's process with DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1 (the .NET ones), the
                            SafeSockets proxy with UnsafePreferInlineScheduling
          --concurrency C   requests in flight (ab -c; default 4)
          --rounds R        rounds (default 5)
          --no-install      do not install missing Debian packages (nginx-light, libnginx-mod-stream, apache2-utils)
          --out DIR         also write proxy.md there
        """;

    private const string Nginx = "/usr/sbin/nginx";
    private const string StreamModule = "/usr/lib/nginx/modules/ngx_stream_module.so";
    private const string ApacheBench = "/usr/bin/ab";
    private static readonly string[] Packages = ["nginx-light", "libnginx-mod-stream", "apache2-utils"];
    private static readonly string[] Proxies = ["raw", "safesockets", "nginx"];

    // Until tiered compilation has settled: the hot-path runs found 2,000 warm-up cycles left the JIT's background thread
    // with 11-14% of the measured CPU, more for SafeSockets (more methods to compile); the first version warmed up with
    // requests / 10 (1,000).
    private const int DefaultWarmup = 10_000;

    public static async Task<int> RunAsync(string[] args)
    {
        bool install = !args.Contains("--no-install");
        args = [.. args.Where(a => a != "--no-install")];
        int requests, concurrency, rounds, warmup;
        bool inline = args.Contains("--inline");
        string? outDir;
        try
        {
            ReliabilityCommands.CheckOptions([.. args.Where(a => a != "--inline")], "proxy", "--requests", "--concurrency", "--rounds", "--warmup", "--out");
            requests = ReliabilityCommands.IntArg(args, "--requests", 10_000);
            concurrency = ReliabilityCommands.IntArg(args, "--concurrency", 4);
            rounds = ReliabilityCommands.IntArg(args, "--rounds", 5);
            warmup = ReliabilityCommands.IntArg(args, "--warmup", DefaultWarmup);
            outDir = ReliabilityCommands.StringArg(args, "--out", "") is { Length: > 0 } o ? o : null;
        }
        catch (ArgumentException ex)
        {
            Console.Error.WriteLine(ex.Message);
            Console.Error.WriteLine(Usage);
            return 2;
        }

        if (!EnsureTools(install))
        {
            return 2;
        }

        if (!ChildRuns.CanUnshare())
        {
            Console.Error.WriteLine("proxy: needs a private network namespace (`unshare -n`, as root, with iproute2's `ip`): every round runs in one.");
            return 2;
        }

        Console.WriteLine($"proxy{(inline ? " --inline" : "")}: ab -n {requests} -c {concurrency} after {warmup} warm-up requests (a new connection per request) -> proxy -> nginx (return 200, 64-byte body); "
            + $"{rounds} rounds, each proxy in a fresh network namespace of its own, in an order rotating by round; proxies: raw sockets, SafeSockets (samples/HalfCloseProxy), nginx stream (proxy_half_close on); "
            + $"{Environment.ProcessorCount} cores, .NET {Environment.Version}.");
        var results = Proxies.ToDictionary(p => p, _ => new List<ProxyResult>());
        for (int round = 1; round <= rounds; round++)
        {
            // Each proxy in a namespace of its own (its own upstream nginx, TIME_WAIT table and counters), in an order
            // that rotates round by round: run one after the other in one namespace, the second and third proxies paid
            // for the TIME_WAIT entries the first left on the same ports (port searches and lookups in the kernel,
            // counted as their CPU), and the raw proxy always ran first.
            foreach (string proxy in Proxies.Skip((round - 1) % Proxies.Length).Concat(Proxies.Take((round - 1) % Proxies.Length)))
            {
                ProxyResult? one = await RunProxyChildAsync(proxy, requests, concurrency, warmup, inline);
                if (one is not { } r)
                {
                    return 1;
                }

                results[proxy].Add(r);
                Console.WriteLine($"round {round}/{rounds} {proxy,-12} {r.RequestsPerSecond,8:N0} requests/s  proxy CPU {r.CpuMicrosPerRequest,6:N1} us/request  "
                    + $"failed {r.Failed}  non-2xx {r.Non2xx}  OutRsts {r.OutRsts}");
            }
        }

        string markdown = Markdown(results, requests, concurrency, rounds, warmup);
        Console.WriteLine();
        Console.WriteLine(markdown);
        if (outDir is not null)
        {
            Directory.CreateDirectory(outDir);
            await File.WriteAllTextAsync(Path.Combine(outDir, "proxy.md"), markdown);
        }

        // Every request must have its whole answer through every proxy: a failure is a broken run, not a figure.
        bool broken = results.Values.SelectMany(r => r).Any(r => r.Failed > 0 || r.Non2xx > 0 || r.Completed != requests);
        if (broken)
        {
            Console.Error.WriteLine("proxy: FAILED: a proxy lost requests (see 'failed' above).");
        }

        return broken ? 1 : 0;
    }

    private static string Markdown(Dictionary<string, List<ProxyResult>> results, int requests, int concurrency, int rounds, int warmup)
    {
        static double Median(IEnumerable<double> values)
        {
            double[] sorted = [.. values.Order()];
            return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[(sorted.Length / 2) - 1] + sorted[sorted.Length / 2]) / 2;
        }

        List<ProxyResult> raw = results["raw"];
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"`proxy --requests {requests} --concurrency {concurrency} --rounds {rounds} --warmup {warmup}`: medians over rounds; ratios against the raw-socket proxy within each round, then the median:");
        text.AppendLine();
        text.AppendLine("| proxy | requests/s | ratio | proxy CPU us/request | CPU ratio | failed | OutRsts (all rounds) |");
        text.AppendLine("|---|---:|---:|---:|---:|---:|---:|");
        foreach ((string proxy, List<ProxyResult> r) in results)
        {
            text.AppendLine(CultureInfo.InvariantCulture,
                $"| {proxy} | {Median(r.Select(x => x.RequestsPerSecond)):N0} ({r.Min(x => x.RequestsPerSecond):N0}-{r.Max(x => x.RequestsPerSecond):N0}) | "
                + $"{Median(r.Select((x, i) => x.RequestsPerSecond / raw[i].RequestsPerSecond)):N2} | {Median(r.Select(x => x.CpuMicrosPerRequest)):N1} | "
                + $"{Median(r.Select((x, i) => x.CpuMicrosPerRequest / raw[i].CpuMicrosPerRequest)):N2} | {r.Sum(x => x.Failed + x.Non2xx)} | {r.Sum(x => x.OutRsts)} |");
        }

        return text.ToString();
    }

    /// <summary>Installs what is missing (as root, through apt-get) or says exactly what to install.</summary>
    private static bool EnsureTools(bool install)
    {
        bool Present() => File.Exists(Nginx) && File.Exists(StreamModule) && File.Exists(ApacheBench);
        if (Present())
        {
            return true;
        }

        string missing = $"needs nginx with its stream module and ApacheBench: Debian packages {string.Join(", ", Packages)}";
        if (!install || Environment.UserName != "root" || !File.Exists("/usr/bin/apt-get"))
        {
            Console.Error.WriteLine($"proxy: {missing}. Install them (apt-get install {string.Join(' ', Packages)}) or run as root without --no-install.");
            return false;
        }

        Console.WriteLine($"proxy: installing {string.Join(", ", Packages)} (apt-get)...");
        if (Run("apt-get", ["install", "-y", "-qq", "--no-install-recommends", .. Packages]) != 0
            && (Run("apt-get", ["update", "-qq"]) != 0 || Run("apt-get", ["install", "-y", "-qq", "--no-install-recommends", .. Packages]) != 0))
        {
            Console.Error.WriteLine($"proxy: apt-get could not install {string.Join(", ", Packages)}.");
            return false;
        }

        // The package starts a system nginx on port 80; this command never uses it, and stops it so it does not linger.
        Run("sh", ["-c", "command -v systemctl >/dev/null && systemctl stop nginx >/dev/null 2>&1; pkill -f 'nginx: master process /usr/sbin/nginx' >/dev/null 2>&1; true"]);
        return Present();

        static int Run(string file, string[] arguments)
        {
            using Process? p = Process.Start(new ProcessStartInfo(file, arguments) { RedirectStandardOutput = true, RedirectStandardError = true });
            if (p is null)
            {
                return -1;
            }

            p.StandardOutput.ReadToEnd();
            string error = p.StandardError.ReadToEnd();
            p.WaitForExit();
            if (p.ExitCode != 0)
            {
                Console.Error.WriteLine(error);
            }

            return p.ExitCode;
        }
    }

    private static async Task<ProxyResult?> RunProxyChildAsync(string proxy, int requests, int concurrency, int warmup, bool inline)
    {
        string? stdout = await ChildRuns.RunAsync(
            ["proxy-run", "--proxy", proxy, "--requests", ChildRuns.Invariant(requests), "--concurrency", ChildRuns.Invariant(concurrency), "--warmup", ChildRuns.Invariant(warmup),
                .. (inline ? (string[])["--inline"] : [])],
            networkNamespace: true, TimeSpan.FromMinutes(10), $"proxy: a run of the {proxy} proxy",
            inline ? new Dictionary<string, string> { ["DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS"] = "1" } : null);
        if (stdout is null)
        {
            return null;
        }

        string[]? f = ChildRuns.Results(stdout).FirstOrDefault(r => r.Length == 8 && r[1] == proxy);
        if (f is null)
        {
            Console.Error.WriteLine($"proxy: the run of the {proxy} proxy reported no result:");
            Console.Error.WriteLine(stdout);
            return null;
        }

        return new ProxyResult(double.Parse(f[2], CultureInfo.InvariantCulture), double.Parse(f[3], CultureInfo.InvariantCulture),
            int.Parse(f[4], CultureInfo.InvariantCulture), int.Parse(f[5], CultureInfo.InvariantCulture), int.Parse(f[6], CultureInfo.InvariantCulture),
            long.Parse(f[7], CultureInfo.InvariantCulture));
    }

    /// <summary>One proxy's run, inside its own network namespace: the upstream nginx, then the proxy under ab.</summary>
    public static async Task<int> RunRoundAsync(string[] args)
    {
        int requests = ReliabilityCommands.IntArg(args, "--requests", 10_000);
        int concurrency = ReliabilityCommands.IntArg(args, "--concurrency", 4);
        int warmup = ReliabilityCommands.IntArg(args, "--warmup", DefaultWarmup);
        bool inline = args.Contains("--inline");
        if (inline && Environment.GetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS") != "1")
        {
            throw new ArgumentException("--inline needs DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1 in the process's environment (proxy sets it for its runs).");
        }

        int at = Array.IndexOf(args, "--proxy");
        string proxy = at >= 0 && at + 1 < args.Length && Proxies.Contains(args[at + 1])
            ? args[at + 1]
            : throw new ArgumentException($"proxy-run needs --proxy {string.Join(", ", Proxies)}.");
        string work = Directory.CreateTempSubdirectory("safesockets-proxy-").FullName;
        try
        {
            const int UpstreamPort = 18080;
            const int ProxyPort = 18081;
            using NginxProcess upstream = NginxProcess.Start(work, "upstream", $$"""
                http {
                    access_log off;
                    server {
                        listen 127.0.0.1:{{UpstreamPort}};
                        location / { return 200 "{{new string('x', 63)}}\n"; }
                    }
                }
                """, workers: 1);
            var upstreamEndPoint = new IPEndPoint(IPAddress.Loopback, UpstreamPort);
            await WaitForPortAsync(upstreamEndPoint);

            ProxyResult result = proxy switch
            {
                "raw" => await InProcessAsync(new RawProxy(new IPEndPoint(IPAddress.Loopback, ProxyPort), upstreamEndPoint), ProxyPort, requests, concurrency, warmup),
                "safesockets" => await InProcessAsync(new SafeSocketsProxy(new IPEndPoint(IPAddress.Loopback, ProxyPort), upstreamEndPoint, inline), ProxyPort, requests, concurrency, warmup),
                _ => await NginxProxyAsync(work, upstreamEndPoint, ProxyPort, requests, concurrency, warmup),
            };
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"result {proxy} {result.RequestsPerSecond:R} {result.CpuMicrosPerRequest:R} {result.Completed} {result.Failed} {result.Non2xx} {result.OutRsts}"));

            return 0;
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }

    private static async Task<ProxyResult> InProcessAsync(IRunningProxy proxy, int port, int requests, int concurrency, int warmup)
    {
        await using (proxy)
        {
            await AbAsync(port, warmup, concurrency); // warm-up: JIT, pools
            TimeSpan cpuBefore = Process.GetCurrentProcess().TotalProcessorTime;
            KernelCounters kernelBefore = KernelCounters.Read();
            long workItemsBefore = ThreadPool.CompletedWorkItemCount;
            long switchesBefore = HotPathCommand.ContextSwitches();
            AbResult ab = await AbAsync(port, requests, concurrency);
            TimeSpan cpu = Process.GetCurrentProcess().TotalProcessorTime - cpuBefore;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"thread-pool work items {(double)(ThreadPool.CompletedWorkItemCount - workItemsBefore) / requests:N2} per request, context switches {(double)(HotPathCommand.ContextSwitches() - switchesBefore) / requests:N2} per request (the proxy's process)"));
            return new ProxyResult(ab.RequestsPerSecond, cpu.TotalMicroseconds / requests, ab.Completed, ab.Failed, ab.Non2xx, (KernelCounters.Read() - kernelBefore).OutRsts);
        }
    }

    private static async Task<ProxyResult> NginxProxyAsync(string work, IPEndPoint upstream, int port, int requests, int concurrency, int warmup)
    {
        using NginxProcess nginx = NginxProcess.Start(work, "proxy", $$"""
            stream {
                server {
                    listen 127.0.0.1:{{port}};
                    proxy_pass {{upstream}};
                    proxy_half_close on;
                }
            }
            """, workers: Environment.ProcessorCount);
        await WaitForPortAsync(new IPEndPoint(IPAddress.Loopback, port));
        await AbAsync(port, warmup, concurrency);
        TimeSpan cpuBefore = nginx.WorkersCpu();
        KernelCounters kernelBefore = KernelCounters.Read();
        AbResult ab = await AbAsync(port, requests, concurrency);
        TimeSpan cpu = nginx.WorkersCpu() - cpuBefore;
        return new ProxyResult(ab.RequestsPerSecond, cpu.TotalMicroseconds / requests, ab.Completed, ab.Failed, ab.Non2xx, (KernelCounters.Read() - kernelBefore).OutRsts);
    }

    private static async Task WaitForPortAsync(IPEndPoint endPoint)
    {
        var waited = Stopwatch.StartNew();
        while (true)
        {
            using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                await probe.ConnectAsync(endPoint).WaitAsync(TimeSpan.FromSeconds(5));
                return;
            }
            catch (SocketException) when (waited.Elapsed < TimeSpan.FromSeconds(10))
            {
                await Task.Delay(20);
            }
        }
    }

    [GeneratedRegex(@"Requests per second:\s+([0-9.]+)")]
    private static partial Regex RateLine();

    [GeneratedRegex(@"Complete requests:\s+(\d+)")]
    private static partial Regex CompleteLine();

    [GeneratedRegex(@"Failed requests:\s+(\d+)")]
    private static partial Regex FailedLine();

    [GeneratedRegex(@"Non-2xx responses:\s+(\d+)")]
    private static partial Regex Non2xxLine();

    private static async Task<AbResult> AbAsync(int port, int requests, int concurrency)
    {
        // -r: go on after a socket error (it is counted as failed, which fails the command); -s: ab's own per-request bound.
        var start = new ProcessStartInfo(ApacheBench, ["-q", "-r", "-s", "10", "-n", requests.ToString(CultureInfo.InvariantCulture),
            "-c", concurrency.ToString(CultureInfo.InvariantCulture), $"http://127.0.0.1:{port}/"])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using Process ab = Process.Start(start) ?? throw new InvalidOperationException("could not start ab");
        Task<string> output = ab.StandardOutput.ReadToEndAsync();
        Task<string> error = ab.StandardError.ReadToEndAsync();
        await ab.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(5));
        string text = await output;
        Match rate = RateLine().Match(text);
        if (ab.ExitCode != 0 || !rate.Success)
        {
            throw new InvalidOperationException($"ab failed (exit code {ab.ExitCode}): {text}{await error}");
        }

        int Field(Regex pattern) => pattern.Match(text) is { Success: true } m ? int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) : 0;
        return new AbResult(double.Parse(rate.Groups[1].Value, CultureInfo.InvariantCulture), Field(CompleteLine()), Field(FailedLine()), Field(Non2xxLine()));
    }

    private readonly record struct AbResult(double RequestsPerSecond, int Completed, int Failed, int Non2xx);

    private readonly record struct ProxyResult(double RequestsPerSecond, double CpuMicrosPerRequest, int Completed, int Failed, int Non2xx, long OutRsts);

    /// <summary>An nginx of our own: its prefix, configuration and pid file in the round's folder, in the foreground.</summary>
    private sealed class NginxProcess : IDisposable
    {
        private readonly Process _process;

        private NginxProcess(Process process) => _process = process;

        public static NginxProcess Start(string work, string name, string body, int workers)
        {
            string prefix = Directory.CreateDirectory(Path.Combine(work, name)).FullName;
            Directory.CreateDirectory(Path.Combine(prefix, "logs"));
            string conf = Path.Combine(prefix, "nginx.conf");
            File.WriteAllText(conf, $$"""
                load_module {{StreamModule}};
                worker_processes {{workers}};
                daemon off;
                pid {{prefix}}/nginx.pid;
                error_log {{prefix}}/logs/error.log warn;
                events { worker_connections 4096; }
                {{body}}
                """);
            Process process = Process.Start(new ProcessStartInfo(Nginx, ["-p", prefix, "-c", conf]) { RedirectStandardError = true, RedirectStandardOutput = true })
                ?? throw new InvalidOperationException("could not start nginx");
            return new NginxProcess(process);
        }

        /// <summary>CPU time of the master and its workers so far (from /proc: utime + stime of each).</summary>
        public TimeSpan WorkersCpu()
        {
            long ticks = 0;
            foreach (string dir in Directory.EnumerateDirectories("/proc"))
            {
                if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out int pid))
                {
                    continue;
                }

                string stat = Path.Combine(dir, "stat");
                string? text = null;
                try
                {
                    text = File.ReadAllText(stat);
                }
                catch (IOException)
                {
                }
                catch (UnauthorizedAccessException)
                {
                }

                if (text is null)
                {
                    continue;
                }

                // pid (comm) state ppid ... utime(14) stime(15): fields after the closing parenthesis.
                int close = text.LastIndexOf(')');
                string[] f = text[(close + 2)..].Split(' ');
                int ppid = int.Parse(f[1], CultureInfo.InvariantCulture);
                if (pid == _process.Id || ppid == _process.Id)
                {
                    ticks += long.Parse(f[11], CultureInfo.InvariantCulture) + long.Parse(f[12], CultureInfo.InvariantCulture);
                }
            }

            // USER_HZ is 100 on Linux.
            return TimeSpan.FromSeconds(ticks / 100.0);
        }

        public void Dispose()
        {
            try
            {
                _process.Kill(entireProcessTree: true);
                _process.WaitForExit(10_000);
            }
            catch (InvalidOperationException)
            {
            }

            _process.Dispose();
        }
    }

    private interface IRunningProxy : IAsyncDisposable
    {
    }

    /// <summary>The sample's proxy (samples/HalfCloseProxy/Proxy.cs, compiled in), on SafeSockets.</summary>
    private sealed class SafeSocketsProxy : IRunningProxy
    {
        private readonly ManagedListener _listener;
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _running;

        public SafeSocketsProxy(IPEndPoint listen, IPEndPoint upstream, bool inline)
        {
            ManagedConnectionOptions options = HalfCloseProxy.Proxy.ConnectionOptions(HalfCloseProxy.Proxy.DefaultProxyTimeout);
            options.UnsafePreferInlineScheduling = inline; // the pumps never block after a read: awaits only
            _listener = ManagedListener.Start(listen, new ManagedListenerOptions { Connection = options, Backlog = 1024 });
            _running = HalfCloseProxy.Proxy.RunAsync(_listener, upstream, options, _stop.Token);
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            await _running;
            await _listener.StopAsync(TimeSpan.FromSeconds(5));
            _stop.Dispose();
        }
    }

    /// <summary>The same proxy on raw sockets: two pumps per connection; a reader's FIN becomes Shutdown(Send) onwards; both
    /// sockets are disposed once both directions have ended; an error on either side disposes both.</summary>
    private sealed class RawProxy : IRunningProxy
    {
        private readonly Socket _listener;
        private readonly EndPoint _upstream;
        private readonly Task _accepting;

        public RawProxy(IPEndPoint listen, IPEndPoint upstream)
        {
            _upstream = upstream;
            _listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            _listener.Bind(listen);
            _listener.Listen(1024);
            _accepting = AcceptAsync();
        }

        public async ValueTask DisposeAsync()
        {
            _listener.Dispose();
            await _accepting;
        }

        private async Task AcceptAsync()
        {
            while (true)
            {
                Socket client;
                try
                {
                    client = await _listener.AcceptAsync();
                }
                catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
                {
                    return;
                }

                _ = ProxyOneAsync(client);
            }
        }

        private async Task ProxyOneAsync(Socket client)
        {
            using (client)
            {
                using var server = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                try
                {
                    await server.ConnectAsync(_upstream);
                }
                catch (SocketException)
                {
                    return;
                }

                await Task.WhenAll(PumpAsync(client, server), PumpAsync(server, client));
            }
        }

        private static async Task PumpAsync(Socket from, Socket to)
        {
            byte[] buffer = new byte[16 * 1024];
            try
            {
                int n;
                while ((n = await from.ReceiveAsync(buffer, SocketFlags.None)) > 0)
                {
                    await to.SendAsync(buffer.AsMemory(0, n), SocketFlags.None);
                }

                to.Shutdown(SocketShutdown.Send);
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                from.Dispose();
                to.Dispose();
            }
        }
    }
}
