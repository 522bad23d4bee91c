// Attention microbenchmark (docs/attention.md): times candidate attention routes on one self-attention's shapes,
// interleaved (A, B, C, A, B, C, …) so that they share the machine's noise, reports wall clock and process CPU time
// per call (medians) with the load average, and measures each route's error against an fp64 reference on the same
// bf16 inputs. Not part of the solution or the tests: run it by hand,
//   dotnet run -c Release --project tools/AttentionBench -- [transformer|vae] [rounds] [route,route,…|all] [noref]
// Routes: sdpa (Attention.Forward, the library's), amx-blocked (AmxBlockedAttention.cs), amx-rowpad0 (the same
// without the cache-line padding of its S/P rows), amx-transposed (AmxTransposedAttention.cs), and the
// query-row-blocked libtorch routes bf16-scores/256, comp-scores/256, comp-scores/1024, fp32-scores/256 (Blocked).
// ATTN_ROWS=R sets amx-blocked's query rows per task, ATTN_ROWPAD its row padding;
// ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 runs everything without AMX.
using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

PixArtSharp.TorchRuntime.EnsureLoaded();
string which = args.Length > 0 ? args[0] : "transformer";
int rounds = args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 5;
// transformer: one 1024 px self-attention (16 heads, 4096 tokens, head dim 72); vae: the 1024 px mid-block (one head,
// 16384 positions, 512 channels).
var (heads, n, d) = which == "vae" ? (1L, 16384L, 512L) : (16L, 4096L, 72L);
double scale = 1 / Math.Sqrt(d);
// Logits q·k/√d of std ≈ 6 as measured in the real model (README): q, k ~ N(0, 6/√d·…) per element.
double sigma = Math.Pow(36.0, 0.25);
var g = new Generator(1);
var q = (randn([1, heads, n, d], generator: g) * sigma).to(ScalarType.BFloat16);
var k = (randn([1, heads, n, d], generator: g) * sigma).to(ScalarType.BFloat16);
var v = randn([1, heads, n, d], generator: g).to(ScalarType.BFloat16);
Console.WriteLine($"{which}: q,k,v (1, {heads}, {n}, {d}) bf16, threads {get_num_threads()}, {rounds} rounds");

var routes = new List<(string Name, Func<Tensor, Tensor, Tensor, Tensor> Run)>
{
    ("sdpa", (q, k, v) => PixArtSharp.Models.Attention.Forward(q, k, v)),   // what the library runs
    ("amx-blocked", (q, k, v) => AttentionBench.AmxBlockedAttention.Forward(q, k, v)),
    ("amx-transposed", (q, k, v) => AttentionBench.AmxTransposedAttention.Forward(q, k, v)),
    ("amx-rowpad0", (q, k, v) =>
    {
        long saved = AttentionBench.AmxBlockedAttention.RowPad;
        AttentionBench.AmxBlockedAttention.RowPad = 0;   // S/P rows L·4 / L·2 bytes apart, no padding
        try { return AttentionBench.AmxBlockedAttention.Forward(q, k, v); }
        finally { AttentionBench.AmxBlockedAttention.RowPad = saved; }
    }),
    ("bf16-scores/256", (q, k, v) => Blocked(q, k, v, 256, Scores.Bf16)),
    ("comp-scores/256", (q, k, v) => Blocked(q, k, v, 256, Scores.Compensated)),
    ("fp32-scores/256", (q, k, v) => Blocked(q, k, v, 256, Scores.Fp32)),
    ("comp-scores/1024", (q, k, v) => Blocked(q, k, v, 1024, Scores.Compensated)),
};
if (Environment.GetEnvironmentVariable("ATTN_ROWS") is string rows) AttentionBench.AmxBlockedAttention.RowsOverride = long.Parse(rows, System.Globalization.CultureInfo.InvariantCulture);
if (Environment.GetEnvironmentVariable("ATTN_ROWPAD") is string pad) AttentionBench.AmxBlockedAttention.RowPad = long.Parse(pad, System.Globalization.CultureInfo.InvariantCulture);
if (!AttentionBench.AmxBlockedAttention.IsAvailable) routes.RemoveAll(r => r.Name.StartsWith("amx-", StringComparison.Ordinal));
if (n % 16 != 0) routes.RemoveAll(r => r.Name == "amx-transposed");
if (args.Length > 2 && args[2] != "all") routes = routes.Where(r => args[2].Split(',').Contains(r.Name)).ToList();

// Accuracy: fp64 reference on the same bf16 inputs, over a subset of query rows (all of them for the transformer).
long refRows = args.Length > 3 && args[3] == "noref" ? 1 : Math.Min(n, which == "vae" ? 1024 : n);
Tensor reference;
using (var _ = NewDisposeScope())
{
    var q64 = q.to(ScalarType.Float64)[.., .., ..(int)refRows];
    var k64 = k.to(ScalarType.Float64);
    var v64 = v.to(ScalarType.Float64);
    var outs = new List<Tensor>();
    for (long h = 0; h < heads; h++)
    {
        var s = q64[0, h].matmul(k64[0, h].transpose(0, 1)).mul_(scale);
        outs.Add(F.softmax(s, -1).matmul(v64[0, h]));
    }
    reference = stack(outs).unsqueeze(0).MoveToOuterDisposeScope();
}
foreach (var (name, run) in routes)
{
    using var _ = NewDisposeScope();
    var o = run(q, k, v)[.., .., ..(int)refRows].to(ScalarType.Float64);
    var e = (o - reference).abs();
    Console.WriteLine($"{name,-20} error vs fp64: max {e.max().item<double>():E2}  mean {e.mean().item<double>():E2}");
}

var times = routes.ToDictionary(r => r.Name, _ => new List<double>());
// Process CPU time (user + system, all threads) per call: under a shared machine's load the wall clock mostly
// measures the neighbours; the CPU time a route needs is what it costs on an idle machine (OpenMP spin-waiting
// included, which is real cost there too).
var cpu = routes.ToDictionary(r => r.Name, _ => new List<double>());
var self = Process.GetCurrentProcess();
foreach (var (_, run) in routes) run(q, k, v).Dispose();   // warm-up: oneDNN primitives, allocator
for (int round = 0; round < rounds; round++)
{
    string load = File.ReadAllText("/proc/loadavg").Split(' ')[0];
    var line = new List<string>();
    foreach (var (name, run) in routes)
    {
        self.Refresh();
        var cpu0 = self.TotalProcessorTime;
        var sw = Stopwatch.StartNew();
        run(q, k, v).Dispose();
        times[name].Add(sw.Elapsed.TotalSeconds);
        self.Refresh();
        cpu[name].Add((self.TotalProcessorTime - cpu0).TotalSeconds);
        line.Add($"{name} {sw.Elapsed.TotalSeconds:F3} (cpu {cpu[name][^1]:F3})");
    }
    Console.WriteLine($"round {round + 1} (load {load}): {string.Join(", ", line)}");
}
string loadEnd = File.ReadAllText("/proc/loadavg").Trim();
foreach (var (name, _) in routes)
{
    var t = times[name].Order().ToList();
    var c = cpu[name].Order().ToList();
    Console.WriteLine($"{name,-20} median {t[t.Count / 2]:F3} s  (min {t[0]:F3}, max {t[^1]:F3}); CPU time median {c[c.Count / 2]:F3} s (min {c[0]:F3})");
}
Console.WriteLine($"loadavg at the end: {loadEnd}");

// Query-row-blocked attention from libtorch ops, all heads of `rows` query rows at a time: scores → fp32 softmax →
// bf16 probabilities → matmul with v. Scores: Bf16 = bf16 matmul (scale folded in as baddbmm's α), rounded to bf16
// before the softmax; Compensated = that plus a second baddbmm computing bf16(α·q·kᵀ − hi) in one fused oneDNN
// epilogue (post-op sum, scale −1), so hi + lo carries ~16 significant bits; Fp32 = q, k upcast, fp32 matmul.
static Tensor Blocked(Tensor q, Tensor k, Tensor v, long rows, Scores kind)
{
    using var scope = NewDisposeScope();
    long b = q.shape[0], h = q.shape[1], n = q.shape[2], d = q.shape[3], l = k.shape[2];
    float scale = (float)(1 / Math.Sqrt(d));
    var q3 = q.reshape(b * h, n, d);
    var v3 = v.reshape(b * h, l, d);
    var kt = k.reshape(b * h, l, d).transpose(1, 2).contiguous();   // [BH, d, L]
    Tensor? qf = null, ktf = null;
    if (kind == Scores.Fp32) { qf = q3.to(ScalarType.Float32).mul_(scale); ktf = kt.to(ScalarType.Float32); }
    var o = empty([b * h, n, d], dtype: q.dtype, device: q.device);
    for (long r0 = 0; r0 < n; r0 += rows)
    {
        using var inner = NewDisposeScope();
        long rb = Math.Min(rows, n - r0);
        Tensor s;
        if (kind == Scores.Fp32)
            s = qf!.narrow(1, r0, rb).matmul(ktf!);
        else
        {
            var qb = q3.narrow(1, r0, rb);
            // TorchSharp 0.107 passes baddbmm's operands rotated: x.baddbmm(y, z) computes z·β + (x @ y)·α.
            var hi = qb.baddbmm(kt, empty([1, 1, 1], dtype: q.dtype), 0, scale);
            if (kind == Scores.Bf16) s = hi.to(ScalarType.Float32);
            else
            {
                var lo = qb.baddbmm(kt, hi, -1, scale);   // bf16(α·q·kᵀ − hi): the part hi's rounding lost
                s = hi.to(ScalarType.Float32).add_(lo);
            }
        }
        var p = F.softmax(s, -1).to(q.dtype);
        o.narrow(1, r0, rb).copy_(p.matmul(v3));
    }
    return o.view(b, h, n, d).MoveToOuterDisposeScope();
}

enum Scores { Bf16, Compensated, Fp32 }
