using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using PixArtSharp.Cli.Serve;
using PixArtSharp.Cli.Serve.Queue;
using PixArtSharp.Cli.Worker;
using PixArtSharp.Pipeline;

namespace PixArtSharp.Tests.Serve.Queue;

/// <summary>
/// Debian's redis-server, started by a test on a free loopback port in a temporary folder, without persistence
/// (the restart test saves once, on purpose, with SHUTDOWN SAVE), and stopped at the end.
/// </summary>
public sealed class RedisTestServer : IDisposable
{
    private Process? _process;
    public int Port { get; }
    public string Dir { get; } = Directory.CreateTempSubdirectory("pixart-redis-").FullName;
    public string Url => $"redis://127.0.0.1:{Port}";
    public RedisQueueAddress Address => RedisQueueAddress.Parse(Url);

    public RedisTestServer()
    {
        Port = FreePort();
        Start();
    }

    public static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    public void Start()
    {
        string exe = new[] { "/usr/bin/redis-server", "/usr/local/bin/redis-server" }.FirstOrDefault(File.Exists)
            ?? throw new InvalidOperationException("redis-server is not installed: run 'apt-get install -y redis-server' (.ci/ensure-redis does it as root) for the queue tests.");
        var psi = new ProcessStartInfo(exe) { WorkingDirectory = Dir, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "--port", Port.ToString(CultureInfo.InvariantCulture), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", Dir, "--protected-mode", "yes" })
            psi.ArgumentList.Add(a);
        _process = Process.Start(psi)!;
        _process.OutputDataReceived += (_, _) => { };
        _process.ErrorDataReceived += (_, _) => { };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (Command("PING") != "+PONG")
        {
            if (_process.HasExited || DateTime.UtcNow > until) throw new InvalidOperationException($"redis-server did not start on port {Port}.");
            Thread.Sleep(20);
        }
    }

    /// <summary>Stops Redis; <paramref name="save"/> writes its data first (a restart then finds the queue as it was).</summary>
    public void Stop(bool save = false)
    {
        if (_process is null) return;
        Command(save ? "SHUTDOWN SAVE" : "SHUTDOWN NOSAVE");
        if (!_process.WaitForExit(TimeSpan.FromSeconds(10))) _process.Kill();
        _process.Dispose();
        _process = null;
    }

    /// <summary>One inline command; its first reply line (null when Redis does not answer).</summary>
    public string? Command(string command)
    {
        try
        {
            using var c = new TcpClient();
            c.Connect(IPAddress.Loopback, Port);
            c.ReceiveTimeout = 2000;
            var s = c.GetStream();
            s.Write(Encoding.ASCII.GetBytes(command + "\r\n"));
            var buffer = new byte[4096];
            int n = s.Read(buffer);
            return n <= 0 ? null : Encoding.ASCII.GetString(buffer, 0, n).Split("\r\n")[0];
        }
        catch (Exception e) when (e is SocketException or IOException) { return null; }
    }

    public void Dispose()
    {
        try { Stop(); } catch (Exception) { _process?.Kill(); }
        try { Directory.Delete(Dir, recursive: true); } catch (IOException) { }
    }
}

/// <summary>A front (<c>pixart serve --queue</c>) on a real loopback port, in this process.</summary>
public sealed class QueueFront : IAsyncDisposable
{
    public required RedisJobQueue Queue { get; init; }
    public required WebApplication App { get; init; }
    public required string BaseUrl { get; init; }

    public static async Task<QueueFront> StartAsync(ServeFixture fx, RedisTestServer redis, int maxQueue = 64)
    {
        var options = new ServeOptions { Host = "127.0.0.1", Port = 0, MaxQueue = maxQueue };
        // The fixture's pipeline stands in for the front's configs-only one: the front never generates with it.
        var queue = new RedisJobQueue(redis.Address, fx.Pipeline, ServeFixture.ModelLabel, options.MaxQueue, options.MaxBatch, options.KeepFinished);
        var app = ServerApp.Build(options, queue);
        await app.StartAsync();
        string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return new QueueFront { Queue = queue, App = app, BaseUrl = url };
    }

    public HttpClient Client() => new() { BaseAddress = new Uri(BaseUrl), Timeout = TimeSpan.FromMinutes(2) };

    public async ValueTask DisposeAsync()
    {
        await App.StopAsync();
        await App.DisposeAsync();
        Queue.Dispose();
    }
}

/// <summary>A <c>pixart worker</c> in this process: its own pipeline (not shared: pipelines are not thread-safe).</summary>
public sealed class InProcessWorker : IAsyncDisposable
{
    private readonly PixArtPipeline _pipeline;
    private readonly GenerationQueue _queue;
    private readonly CancellationTokenSource _stop = new();
    public RedisWorker Worker { get; }
    public StringWriter Log { get; } = new();
    public Task Running { get; }

    public InProcessWorker(ServeFixture fx, RedisTestServer redis, string name, int maxBatch = 4, double visibilitySeconds = 5)
    {
        _pipeline = PixArtAlphaPipeline.FromPretrained(fx.Folder);
        _queue = new GenerationQueue(_pipeline, fx.Model, maxQueue: 1024, maxBatch: maxBatch);
        Worker = new RedisWorker(redis.Address, _queue, new WorkerOptions
        {
            Consumer = name,
            MaxBatch = maxBatch,
            VisibilityTimeout = TimeSpan.FromSeconds(visibilitySeconds),
        }, Log);
        Worker.Trace = Environment.GetEnvironmentVariable("PIXART_QUEUE_TRACE") == "1";
        Running = Task.Run(() => Worker.RunAsync(_stop.Token));
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        await Running.WaitAsync(TimeSpan.FromSeconds(30));
        Worker.Dispose();
        _queue.Dispose();
        _pipeline.Dispose();
    }
}

/// <summary>A <c>pixart worker</c> child process (`dotnet pixart.dll worker …`), so that it can be SIGKILLed.</summary>
public sealed class ChildWorker : IDisposable
{
    private readonly StringBuilder _log = new();
    public Process Process { get; }
    public string Name { get; }
    public string Log { get { lock (_log) return _log.ToString(); } }

    public ChildWorker(ServeFixture fx, RedisTestServer redis, string name, params string[] extra)
    {
        Name = name;
        string dll = typeof(PixArtSharp.Cli.Program).Assembly.Location;
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { dll, "worker", "--queue", redis.Url, "--model", fx.Folder, "--name", name, "--dtype", "fp32" }.Concat(extra))
            psi.ArgumentList.Add(a);
        Process = Process.Start(psi)!;
        Process.OutputDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        Process.ErrorDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        Process.BeginOutputReadLine();
        Process.BeginErrorReadLine();
    }

    public async Task WaitReady(TimeSpan timeout)
    {
        var until = DateTime.UtcNow + timeout;
        while (!Log.Contains(" ready on ", StringComparison.Ordinal))
        {
            if (Process.HasExited || DateTime.UtcNow > until) throw new InvalidOperationException($"worker {Name} did not start:\n{Log}");
            await Task.Delay(50);
        }
    }

    /// <summary>SIGKILL: no clean-up, no acknowledgement, exactly as a crash or the OOM killer.</summary>
    public void Kill() => Process.Kill(entireProcessTree: false);

    public void Dispose()
    {
        if (!Process.HasExited)
        {
            Process.Kill();
            Process.WaitForExit(5000);
        }
        Process.Dispose();
    }
}
