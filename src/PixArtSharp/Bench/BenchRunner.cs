using System.Diagnostics;
using PixArtSharp.Loading;
using PixArtSharp.Models;
using PixArtSharp.Pipeline;
using PixArtSharp.Schedulers;
using PixArtSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Bench;

internal enum BenchComponent { All, T5, Transformer, Vae }

/// <summary>What <c>pixart bench</c> runs.</summary>
internal sealed record BenchOptions
{
    public BenchComponent Component { get; init; } = BenchComponent.All;
    public int Steps { get; init; } = 4;
    /// <summary>Pixels; null = the model's default (sample_size × 8: 1024 for the real configs).</summary>
    public int? Height { get; init; }
    public int? Width { get; init; }
    public int Batch { get; init; } = 1;
    public ScalarType DType { get; init; } = ScalarType.BFloat16;
    public Device? Device { get; init; }
    /// <summary>The pipeline's CPU offload on a GPU (none, model, sequential).</summary>
    public OffloadMode Offload { get; init; }
    /// <summary>libtorch intra-op threads; null = libtorch's default (the core count).</summary>
    public int? Threads { get; init; }
    /// <summary>A diffusers folder to load; null = seeded random weights on the real configs.</summary>
    public string? ModelDir { get; init; }
    public string? Variant { get; init; }
    public long Seed { get; init; }
    /// <summary>
    /// Decode in tiles of this many latents; 0 = as the pipeline decides (whole unless it would not fit in the memory
    /// available). With component vae and a size given, untiled is also run and compared.
    /// </summary>
    public int VaeTileLatents { get; init; }
    /// <summary>Decode with TAESD (random weights in the real AutoencoderTiny config) instead of the SD VAE.</summary>
    public bool TinyVae { get; init; }
    /// <summary>Write the random full-size T5 as a GGUF file of this type (q8_0, q4_k, q5_k, f16, bf16) and load it through the GGUF path.</summary>
    public string? T5Quant { get; init; }
    /// <summary>A T5 GGUF file to time instead of the random (or the folder's) text encoder.</summary>
    public string? TextEncoder { get; init; }
    /// <summary>With a model folder and component all: run the pipeline again in fp32 and compare the images.</summary>
    public bool CompareFp32 { get; init; }
    /// <summary>After the measured run, this many more end-to-end runs with every model kept loaded (the steady state; component all).</summary>
    public int Repeat { get; init; }
    public string Prompt { get; init; } = "A small cabin on top of a snowy mountain in the style of Disney, artstation";
    /// <summary>Random weights (no tokenizer): the fixed prompt's length in tokens, &lt;/s&gt; included (1–120).</summary>
    public int PromptTokens { get; init; } = 25;
}

/// <summary>
/// Runs the full-size PixArt-LCM stages — T5 encode, transformer steps, VAE decode — and times each, on seeded
/// random weights (real configs, no download) or on a model folder. Components are loaded in turn and each is
/// freed before the next is loaded, as <see cref="PipelineOptions.KeepLoaded"/> = false does, so the peak RSS is
/// that of the largest stage (the T5). With a folder and component all, the timings are of
/// <see cref="PixArtAlphaPipeline"/> itself.
/// </summary>
internal static class BenchRunner
{
    private const int Tokens = 120;

    public static BenchResult Run(BenchOptions o, Action<string>? log = null)
    {
        log ??= _ => { };
        Validate(o);
        TorchRuntime.EnsureLoaded();
        if (o.Threads is { } threads) TorchRuntime.SetThreads(threads);
        var device = o.Device ?? CPU;

        var r = new BenchResult
        {
            Component = o.Component.ToString().ToLowerInvariant(),
            Dtype = DTypeName(o.DType),
            Device = device.ToString(),
            Batch = o.Batch,
            Steps = o.Component is BenchComponent.All or BenchComponent.Transformer ? o.Steps : 0,
            Threads = TorchRuntime.Threads,
            Weights = o.ModelDir is null ? $"random (seed {o.Seed}, {RealConfigs.Name} configs)" : Path.GetFullPath(o.ModelDir),
            LoadAverageStart = ProcessStats.LoadAverage1,
        };

        using var temp = o.ModelDir is null ? new RealConfigs.TempFolder() : null;
        var folder = o.ModelDir is null ? null : ModelFolder.Open(o.ModelDir);
        string Dir(string component) => folder?.ComponentDir(component) ?? temp!.PathOf(component);
        var t5Config = T5Config.Load(Path.Combine(Dir("text_encoder"), "config.json"));
        var tConfig = PixArtTransformerConfig.Load(Path.Combine(Dir("transformer"), "config.json"));
        var vConfig = AutoencoderKLConfig.Load(Path.Combine(Dir("vae"), "config.json"));

        int f = vConfig.VaeScaleFactor;
        int height = o.Height ?? tConfig.SampleSize!.Value * f, width = o.Width ?? tConfig.SampleSize!.Value * f;
        int multiple = f * tConfig.PatchSize!.Value;
        if (height % multiple != 0 || width % multiple != 0)
            throw new ArgumentException($"The size must be a multiple of {multiple} pixels (VAE factor {f} × patch {tConfig.PatchSize}); got {height}×{width}.", nameof(o));
        r.Height = height; r.Width = width; r.Size = $"{height}x{width}";
        long lh = height / f, lw = width / f;

        // FLOPs of each stage for this size and batch (formulas in FlopCount); T5 runs on the prompt's tokens only.
        int t5Tokens;
        using (var promptMask = PromptIds(o, folder, t5Config).Mask) t5Tokens = (int)(promptMask.sum().item<long>() / o.Batch);
        r.T5Tokens = t5Tokens;
        r.T5Flops = FlopCount.T5Encoder(t5Config, t5Tokens, o.Batch);
        r.TransformerStepFlops = FlopCount.TransformerForward(tConfig, lh, lw, o.Batch, Tokens);
        r.VaeFlops = FlopCount.VaeDecode(vConfig, lh, lw, o.Batch);

        // The GEMM rate, measured now, in this dtype and thread setting, at this run's token count.
        long tokens = o.Batch * (lh / tConfig.PatchSize!.Value) * (lw / tConfig.PatchSize!.Value);
        r.GemmGflops = GemmProbe.MeasureGflops(o.DType, device, o.Component == BenchComponent.T5 ? o.Batch * Tokens : tokens, Math.Max(tConfig.InnerDim, 512));
        log($"GEMM rate {r.GemmGflops:0} GFLOP/s ({DTypeName(o.DType)}, {r.Threads} threads, load {r.LoadAverageStart:0.00})");

        using var gpu = GpuMemory.TryStart(device);
        r.VaeChannelsLast = TorchRuntime.VaeChannelsLast(device);
        if (device.type == DeviceType.CUDA)
        {
            r.CudnnBenchmark = TorchRuntime.CudnnBenchmark;
            r.GpuMemoryCaching = Environment.GetEnvironmentVariable("PYTORCH_NO_CUDA_MEMORY_CACHING") is null or "" or "0";
        }
        r.Offload = o.Offload.ToString().ToLowerInvariant();
        if (gpu is not null) { r.GpuBaselineBytes = gpu.BaselineBytes; r.GpuTotalBytes = gpu.TotalBytes; }
        var total = Stopwatch.StartNew();
        long peak = 0, gpuPeak = 0;
        void StagePeak(Action<long?> set, Action<long?> setGpu)
        {
            var p = ProcessStats.PeakRssBytes;
            set(p);
            if (p is { } v) peak = Math.Max(peak, v);
            ProcessStats.ResetPeak();
            if (gpu is not null)
            {
                long g = gpu.TakePeak();
                setGpu(g);
                gpuPeak = Math.Max(gpuPeak, g);
            }
        }
        ProcessStats.ResetPeak();
        gpu?.TakePeak();

        Run(o, r, folder, Dir, tConfig, vConfig, device, height, width, StagePeak, log);

        r.E2eSeconds = total.Elapsed.TotalSeconds;
        if (ProcessStats.PeakRssBytes is { } last) peak = Math.Max(peak, last);
        r.GemmGflopsEnd = GemmProbe.MeasureGflops(o.DType, device, o.Component == BenchComponent.T5 ? o.Batch * Tokens : tokens, Math.Max(tConfig.InnerDim, 512));
        r.PeakRssBytes = peak > 0 ? peak : null;
        if (gpu is not null) r.GpuPeakBytes = Math.Max(gpuPeak, gpu.TakePeak());
        Finish(o, r);
        r.LoadAverageEnd = ProcessStats.LoadAverage1;
        return r;
    }

    private static void Validate(BenchOptions o)
    {
        if (o.Steps < 1) throw new ArgumentException($"steps must be at least 1, not {o.Steps}.", nameof(o));
        if (o.Batch < 1) throw new ArgumentException($"batch must be at least 1, not {o.Batch}.", nameof(o));
        if (o.Height is < 1 || o.Width is < 1) throw new ArgumentException("size must be positive.", nameof(o));
        if (o.DType is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new ArgumentException($"dtype must be fp32, bf16 or fp16, not {o.DType}.", nameof(o));
        if (o.VaeTileLatents < 0) throw new ArgumentException($"the VAE tile size must be ≥ 0 latents, not {o.VaeTileLatents}.", nameof(o));
        if (o.Repeat < 0) throw new ArgumentException($"repeat must be ≥ 0, not {o.Repeat}.", nameof(o));
        if (o.PromptTokens is < 1 or > Tokens) throw new ArgumentException($"prompt tokens must be 1 to {Tokens}, not {o.PromptTokens}.", nameof(o));
        if (o.Repeat > 0 && o.Component is not (BenchComponent.All or BenchComponent.Vae))
            throw new ArgumentException("--repeat needs component all (whole runs) or vae (decodes).", nameof(o));
        if (o.CompareFp32 && (o.ModelDir is null || o.Component != BenchComponent.All))
            throw new ArgumentException("--compare-fp32 needs --model and component all (it reruns the pipeline in fp32).", nameof(o));
    }

    /// <summary>
    /// The pipeline on the folder or on seeded random weights (built from components), each model loaded when its
    /// stage starts and freed when it ends (KeepLoaded = false). The stages run are the pipeline's own: T5 on the
    /// prompt's token ids, then <see cref="PixArtPipeline.Generate"/> from those embeddings (its load, step and decode
    /// events give the timings), or only the stage the component option names.
    /// </summary>
    private static void Run(BenchOptions o, BenchResult r, ModelFolder? folder, Func<string, string> dir,
                            PixArtTransformerConfig tConfig, AutoencoderKLConfig vConfig, Device device, int height, int width,
                            Action<Action<long?>, Action<long?>> stagePeak, Action<string> log)
    {
        r.Mode = folder is not null && o.Component == BenchComponent.All ? "pipeline" : "stages";
        r.Vae = o.TinyVae ? "AutoencoderTiny" : "AutoencoderKL";
        string? t5Gguf = o.T5Quant is { } quant ? WriteQuantizedT5(o, dir, quant, r, log) : o.TextEncoder;
        if (t5Gguf is not null)
        {
            r.T5Gguf ??= Path.GetFileName(t5Gguf);
            r.T5GgufBytes = new FileInfo(t5Gguf).Length;
        }
        try { RunAndCompare(o, r, folder, dir, tConfig, vConfig, device, height, width, stagePeak, log, t5Gguf); }
        finally { if (o.T5Quant is not null && t5Gguf is not null) File.Delete(t5Gguf); }
    }

    /// <summary>
    /// The random full-size T5 (the weights <see cref="Weights.Random"/> gives the stages) written as a GGUF file of
    /// <paramref name="quant"/>, so the run loads it through the same code as a user's file.
    /// </summary>
    private static string WriteQuantizedT5(BenchOptions o, Func<string, string> dir, string quant, BenchResult r, Action<string> log)
    {
        if (!Enum.TryParse<Loading.Gguf.GgmlType>(quant, ignoreCase: true, out var type))
            throw new ArgumentException($"--t5-quant must be a GGML type such as q8_0, q4_k, q5_k, f16 or bf16, not '{quant}'.", nameof(o));
        var t5Config = T5Config.Load(Path.Combine(dir("text_encoder"), "config.json"));
        string path = Path.Combine(Path.GetTempPath(), $"pixart-bench-t5-{type}-{Environment.ProcessId}.gguf");
        var sw = Stopwatch.StartNew();
        log($"writing the random T5 as {type} GGUF ({path}) …");
        using (var w = Weights.Random(RandomModelWriter.T5Seed(o.Seed), ScalarType.Float32))
            Loading.Gguf.GgufWriter.WriteT5(path, t5Config, (key, shape) => w.Get(key, shape), type);
        r.T5Gguf = type.ToString();
        r.T5GgufWriteSeconds = sw.Elapsed.TotalSeconds;
        log($"wrote {new FileInfo(path).Length / 1e9:0.00} GB in {sw.Elapsed.TotalSeconds:0} s");
        return path;
    }

    private static void RunAndCompare(BenchOptions o, BenchResult r, ModelFolder? folder, Func<string, string> dir,
                                      PixArtTransformerConfig tConfig, AutoencoderKLConfig vConfig, Device device, int height, int width,
                                      Action<Action<long?>, Action<long?>> stagePeak, Action<string> log, string? t5Gguf)
    {
        var images = RunOnce(o, o.DType, r, folder, dir, tConfig, vConfig, device, height, width, stagePeak, log, t5Gguf);
        using (images)
        {
            if (o.CompareFp32 && images is not null)
            {
                log("running again in fp32 for --compare-fp32");
                using var reference = RunOnce(o, ScalarType.Float32, null, folder, dir, tConfig, vConfig, device, height, width, (_, _) => { }, _ => { }, t5Gguf);
                using var diff = reference!.sub(images).abs_();
                r.Fp32ImageMaxAbsDiff = diff.max().item<float>();
                r.Fp32ImageMeanAbsDiff = diff.mean().item<float>();
            }
        }
    }

    /// <summary>The pipeline for this run: the folder's, or the real configs with seeded random weights.</summary>
    private static PixArtPipeline Build(BenchOptions o, ScalarType dtype, ModelFolder? folder, Func<string, string> dir,
                                        PixArtTransformerConfig tConfig, AutoencoderKLConfig vConfig, Device device, string? t5Gguf = null)
    {
        var options = new PipelineOptions { DType = dtype, Device = device, Offload = o.Offload, Variant = o.Variant, KeepLoaded = o.Repeat > 0, VaeTileLatents = o.VaeTileLatents switch { > 0 => o.VaeTileLatents, 0 => null, _ => 0 } };
        string? gguf = o.TextEncoder ?? t5Gguf;
        if (folder is not null && !o.TinyVae) return PixArtPipeline.FromPretrained(folder.Root, options with { TextEncoder = gguf });
        var t5Config = T5Config.Load(Path.Combine(dir("text_encoder"), "config.json"));
        var configs = folder ?? ModelFolder.Open(Path.GetDirectoryName(dir("scheduler"))!);
        // With offload the models are made in CPU memory and move to the GPU for their stage, as from a folder.
        device = new OffloadPolicy(o.Offload, device).LoadDevice;
        var tinyConfig = new AutoencoderTinyConfig();
        return new PixArtAlphaPipeline(new PipelineComponents
        {
            Folder = folder,
            Tokenizer = folder is null ? null : Text.T5Tokenizer.FromModelFolder(folder.ComponentDir("tokenizer")),
            TransformerConfig = tConfig,
            VaeScaleFactor = vConfig.VaeScaleFactor,
            VaeScalingFactor = o.TinyVae ? 1.0 : vConfig.ScalingFactor,
            LoadTextEncoder = () => gguf is not null ? T5EncoderModel.FromGguf(gguf, dtype, device)
                : folder is not null ? T5EncoderModel.FromFolder(dir("text_encoder"), o.Variant, dtype, device)
                : FromRandom(RandomModelWriter.T5Seed(o.Seed), dtype, device, w => new T5EncoderModel(t5Config, w)),
            LoadTransformer = () => folder is not null ? PixArtTransformer2DModel.FromFolder(dir("transformer"), o.Variant, dtype, device)
                : FromRandom(RandomModelWriter.TransformerSeed(o.Seed), dtype, device, w => new PixArtTransformer2DModel(tConfig, w)),
            LoadVae = () => o.TinyVae ? FromRandom(RandomModelWriter.VaeSeed(o.Seed), dtype, device, w => (IVae)new AutoencoderTiny(tinyConfig, w))
                : folder is not null ? AutoencoderKL.FromFolder(dir("vae"), o.Variant, dtype, device)
                : FromRandom(RandomModelWriter.VaeSeed(o.Seed), dtype, device, w => new AutoencoderKL(vConfig, w)),
            CreateScheduler = name => SchedulerFactory.Create(configs, name),
        }, options);
    }

    /// <summary>One timed run; returns the images (component all) or null.</summary>
    private static Tensor? RunOnce(BenchOptions o, ScalarType dtype, BenchResult? r, ModelFolder? folder, Func<string, string> dir,
                                   PixArtTransformerConfig tConfig, AutoencoderKLConfig vConfig, Device device, int height, int width,
                                   Action<Action<long?>, Action<long?>> stagePeak, Action<string> log, string? t5Gguf)
    {
        bool all = o.Component == BenchComponent.All;
        using var pipe = Build(o, dtype, folder, dir, tConfig, vConfig, device, t5Gguf);
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        double loads = 0, compute = 0;
        var t5Config = T5Config.Load(Path.Combine(dir("text_encoder"), "config.json"));

        // 1. T5: the prompt's ids (the folder's tokenizer, else fixed ids) → [B, 120, 4096] fp32.
        var (ids, mask) = PromptIds(o, folder, t5Config);
        Tensor embeds;
        if (all || o.Component == BenchComponent.T5)
        {
            var sw = Stopwatch.StartNew();
            pipe.LoadTextEncoder();
            double load = sw.Elapsed.TotalSeconds;
            log($"T5 loaded in {load:0.0} s");
            sw.Restart();
            embeds = pipe.EncodeTokens(ids, mask);
            TorchRuntime.Synchronize(device);
            double t5 = sw.Elapsed.TotalSeconds;
            log($"T5 encode {t5:0.00} s");
            if (o.Repeat == 0) pipe.UnloadTextEncoder();
            GC.Collect();
            if (r != null)
            {
                r.T5LoadSeconds = load;
                r.T5Seconds = t5;
                stagePeak(p => r.T5PeakRssBytes = p, g => r.T5GpuPeakBytes = g);
            }
            loads += load;
            compute += t5;
        }
        else
        {
            embeds = randn([o.Batch, Tokens, t5Config.DModel], ScalarType.Float32, generator: new Generator((ulong)o.Seed)).to(device);
        }

        // 2. Transformer: the pipeline's own loop (its scheduler: LCM for the real configs), latents out.
        long lh = height / vConfig.VaeScaleFactor, lw = width / vConfig.VaeScaleFactor;
        Tensor latents;
        if (all || o.Component == BenchComponent.Transformer)
        {
            var steps = new List<double>();
            var stepClock = Stopwatch.StartNew();
            double transformerLoad = 0;
            using var output = pipe.Generate(Request(o, embeds, mask.to(device), height, width, o.Seed) with { OutputType = OutputType.Latent }, step =>
            {
                TorchRuntime.Synchronize(device);
                steps.Add(stepClock.Elapsed.TotalSeconds);
                log($"step {step.Step}/{step.TotalSteps}: {steps[^1]:0.000} s");
                stepClock.Restart();
                return true;
            }, onStage: e =>
            {
                if (e.Stage == PipelineStage.Load && e.Elapsed is { } t) transformerLoad += t.TotalSeconds;
                if (e.Stage == PipelineStage.Denoise && e.Elapsed is null) stepClock.Restart();
            });
            latents = output.Latents.clone();
            GC.Collect();
            log($"transformer loaded in {transformerLoad:0.0} s");
            if (r != null)
            {
                r.TransformerLoadSeconds = transformerLoad;
                r.StepSeconds = steps.ToArray();
                stagePeak(p => r.TransformerPeakRssBytes = p, g => r.TransformerGpuPeakBytes = g);
            }
            loads += transformerLoad;
            compute += steps.Sum();
        }
        else
        {
            latents = randn([o.Batch, tConfig.InChannels!.Value, lh, lw], ScalarType.Float32, generator: new Generator((ulong)o.Seed)).to(device);
        }

        // 3. VAE decode of latents / scaling_factor (in tiles when asked), the pipeline's stage 8.
        Tensor? images = null;
        if (all || o.Component == BenchComponent.Vae)
        {
            double vaeLoad = 0, decode = 0;
            var image = pipe.Decode(latents, e =>
            {
                if (e.Elapsed is not { } t) return;
                if (e.Stage == PipelineStage.Load) vaeLoad = t.TotalSeconds;
                if (e.Stage == PipelineStage.Decode) decode = t.TotalSeconds;   // the pipeline synchronised before timing
            });
            log($"VAE decode {decode:0.00} s");
            if (!all && o.Repeat > 0 && r != null)
            {
                // --repeat with component vae: the same decode again, the first one's kernel selection done.
                var times = new List<double>();
                for (int i = 0; i < o.Repeat; i++)
                {
                    var clock = Stopwatch.StartNew();
                    pipe.Decode(latents).Dispose();
                    TorchRuntime.Synchronize(device);
                    times.Add(clock.Elapsed.TotalSeconds);
                }
                r.SteadySeconds = times.ToArray();
                r.SteadySecondsMedian = r.SteadyVaeSeconds = times.Order().ElementAt(times.Count / 2);
                r.ImagesPerSecond = o.Batch / r.SteadySecondsMedian;
                log($"steady decodes: {string.Join(", ", times.Select(t => t.ToString("0.000", System.Globalization.CultureInfo.InvariantCulture)))} s");
            }
            if (r != null)
            {
                r.VaeLoadSeconds = vaeLoad;
                r.VaeSeconds = decode;
                stagePeak(p => r.VaePeakRssBytes = p, g => r.VaeGpuPeakBytes = g);
            }
            // The tiles the measured decode used: --vae-tile's, or the pipeline's own when a whole decode would not
            // have fit in the memory available.
            if (pipe.LastDecodeTileLatents > 0 && r != null)
            {
                r.VaeTileLatents = pipe.LastDecodeTileLatents;
                if (!all && o.VaeTileLatents > 0)
                {
                    // The tolerance of tiling: the same latents decoded whole.
                    using var whole = Build(o with { VaeTileLatents = -1 /* whole, never automatic tiles */ }, dtype, folder, dir, tConfig, vConfig, device, t5Gguf);
                    var diff = whole.Decode(latents).sub(image).abs_();
                    r.VaeTiledMaxAbsDiff = diff.max().item<float>();
                    r.VaeTiledMeanAbsDiff = diff.mean().item<float>();
                }
            }
            loads += vaeLoad;
            compute += decode;
            if (all) images = image.div(2).add(0.5).clamp(0, 1).permute(0, 2, 3, 1).contiguous().DetachFromDisposeScope();
        }
        if (r != null)
        {
            r.LoadSeconds = loads;
            r.ComputeSeconds = compute;
            if (all && o.Repeat > 0) Steady(o, r, pipe, ids, mask, height, width, device, log);
        }
        return images;
    }

    /// <summary>
    /// --repeat: whole runs on the loaded pipeline — T5 on the ids, the steps, the decode, the images as 8-bit RGB on
    /// the CPU (what a PNG encoder gets) — each timed to its end, synchronised per stage.
    /// </summary>
    private static void Steady(BenchOptions o, BenchResult r, PixArtPipeline pipe, Tensor ids, Tensor mask, int height, int width, Device device, Action<string> log)
    {
        var runs = new List<(double Total, double T5, double Denoise, double Vae)>();
        for (int i = 0; i < o.Repeat; i++)
        {
            using var scope = NewDisposeScope();
            double denoise = 0, vae = 0;
            var clock = Stopwatch.StartNew();
            var embeds = pipe.EncodeTokens(ids, mask);
            TorchRuntime.Synchronize(device);
            double t5 = clock.Elapsed.TotalSeconds;
            using var output = pipe.Generate(Request(o, embeds, mask.to(device), height, width, o.Seed + i + 1), onStage: e =>
            {
                if (e.Elapsed is not { } t) return;
                if (e.Stage == PipelineStage.Denoise) denoise = t.TotalSeconds;
                if (e.Stage == PipelineStage.Decode) vae = t.TotalSeconds;
            });
            using var rgb = output.Images!.mul(255).round_().to(ScalarType.Byte).cpu();
            double total = clock.Elapsed.TotalSeconds;
            log($"steady run {i + 1}/{o.Repeat}: {total:0.000} s (T5 {t5:0.000}, steps {denoise:0.000}, VAE {vae:0.000})");
            runs.Add((total, t5, denoise, vae));
        }
        var median = runs.OrderBy(x => x.Total).ElementAt(runs.Count / 2);
        r.SteadySeconds = runs.Select(x => x.Total).ToArray();
        r.SteadySecondsMedian = median.Total;
        r.SteadyT5Seconds = median.T5;
        r.SteadyDenoiseSeconds = median.Denoise;
        r.SteadyVaeSeconds = median.Vae;
        r.ImagesPerSecond = o.Batch / median.Total;
    }

    /// <summary>The bench's request: these T5 states, the run's steps, no guidance (LCM), the exact size, one seed.</summary>
    private static GenerationRequest Request(BenchOptions o, Tensor embeds, Tensor mask, int height, int width, long seed) => new()
    {
        PromptEmbeds = new PromptEmbeddings(embeds, mask),
        NumInferenceSteps = o.Steps,
        GuidanceScale = 0,
        Height = height,
        Width = width,
        UseResolutionBinning = false,
        Seed = seed,
    };

    /// <summary>A model on seeded random weights, as <see cref="RandomModelWriter"/> writes them.</summary>
    private static T FromRandom<T>(long seed, ScalarType dtype, Device device, Func<Weights, T> build)
    {
        using var w = Weights.Random(seed, dtype, device);
        return build(w);
    }

    /// <summary>
    /// [B, 120] ids and mask: the prompt through the folder's tokenizer, or (random weights) <see cref="BenchOptions.PromptTokens"/>
    /// fixed token ids (the last &lt;/s&gt;) and padding. T5 runs on the prompt's tokens, not the padding, so its cost
    /// follows the prompt's length.
    /// </summary>
    private static (Tensor Ids, Tensor Mask) PromptIds(BenchOptions o, ModelFolder? folder, T5Config c)
    {
        long[] ids, mask;
        string? spiece = folder is null ? null : Path.Combine(folder.Root, "tokenizer", "spiece.model");
        if (spiece is not null && File.Exists(spiece))
        {
            var tok = T5Tokenizer.FromModelFolder(Path.GetDirectoryName(spiece)!);
            var batch = tok.Encode([CaptionCleaner.Preprocess(o.Prompt, true)], Tokens);
            ids = batch.InputIds;
            mask = batch.AttentionMask;
        }
        else
        {
            ids = new long[Tokens];
            mask = new long[Tokens];
            int n = o.PromptTokens;
            for (int i = 0; i < n; i++)
            {
                ids[i] = i == n - 1 ? 1 : 100 + 37 * i % Math.Max(1, c.VocabSize - 200);
                mask[i] = 1;
            }
        }
        var idsT = tensor(ids, [1, Tokens]).repeat(o.Batch, 1);
        var maskT = tensor(mask, [1, Tokens]).repeat(o.Batch, 1);
        return (idsT, maskT);
    }

    private static void Finish(BenchOptions o, BenchResult r)
    {
        double rate = r.GemmGflops * 1e9;
        if (r.StepSeconds is { Length: > 0 } steps)
        {
            var sorted = steps.OrderBy(s => s).ToArray();
            r.StepSecondsMedian = sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
            r.AchievedGflops = r.TransformerStepFlops / r.StepSecondsMedian / 1e9;
            r.StepVsGemmFloor = r.StepSecondsMedian / (r.TransformerStepFlops / rate);
        }
        else
        {
            r.TransformerStepFlops = null;
        }
        if (r.T5Seconds is { } t5) r.T5Gflops = r.T5Flops / t5 / 1e9; else r.T5Flops = null;
        if (r.VaeSeconds is { } vae) r.VaeGflops = r.VaeFlops / vae / 1e9; else r.VaeFlops = null;
        r.AchievedGflops ??= o.Component == BenchComponent.T5 ? r.T5Gflops : r.VaeGflops;
        r.E2eGemmFloorSeconds = ((r.T5Flops ?? 0) + (r.TransformerStepFlops ?? 0) * r.Steps + (r.VaeFlops ?? 0)) / rate;
        if (r.E2eSeconds is { } e2e) r.E2eSecondsPerImage = e2e / o.Batch;
    }

    public static string DTypeName(ScalarType t) => t switch
    {
        ScalarType.Float32 => "fp32",
        ScalarType.BFloat16 => "bf16",
        ScalarType.Float16 => "fp16",
        _ => t.ToString(),
    };
}
