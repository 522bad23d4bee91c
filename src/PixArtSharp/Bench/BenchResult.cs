using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace PixArtSharp.Bench;

/// <summary>
/// What one <c>pixart bench</c> run measured. Serialised (snake_case) as the one JSON object of <c>--json</c>;
/// a stage that was not run is null. Times are wall-clock seconds; FLOP counts come from <see cref="FlopCount"/>.
/// </summary>
internal sealed class BenchResult
{
    public string Component { get; set; } = "all";
    /// <summary>"HEIGHTxWIDTH" in pixels.</summary>
    public string Size { get; set; } = "";
    public int Height { get; set; }
    public int Width { get; set; }
    public string Dtype { get; set; } = "";
    public string Device { get; set; } = "cpu";
    public int Batch { get; set; }
    public int Steps { get; set; }
    public int Threads { get; set; }
    /// <summary>"random (seed N)" or the model folder.</summary>
    public string Weights { get; set; } = "";
    /// <summary>How the stages ran: "pipeline" (PixArtAlphaPipeline on a folder) or "stages" (the models one by one).</summary>
    public string Mode { get; set; } = "stages";
    /// <summary>The VAE that decoded: "AutoencoderKL" or "AutoencoderTiny" (--tiny-vae).</summary>
    public string Vae { get; set; } = "AutoencoderKL";
    /// <summary>The T5 as a GGUF file: its tensor type (--t5-quant) or file (--text-encoder), and its size.</summary>
    public string? T5Gguf { get; set; }
    public long? T5GgufBytes { get; set; }
    /// <summary>Seconds to write the random T5 as GGUF (--t5-quant; not part of the run).</summary>
    public double? T5GgufWriteSeconds { get; set; }
    public double? LoadAverageStart { get; set; }
    public double? LoadAverageEnd { get; set; }

    /// <summary>Sum of the component loads (memory-mapping a folder, or generating random weights).</summary>
    public double? LoadSeconds { get; set; }
    public double? T5LoadSeconds { get; set; }
    public double? TransformerLoadSeconds { get; set; }
    public double? VaeLoadSeconds { get; set; }

    /// <summary>T5 encode of the batch's prompts (on their tokens, <see cref="T5Tokens"/> each; not on the padding to 120).</summary>
    public double? T5Seconds { get; set; }
    /// <summary>Each denoising step: one transformer forward of the batch plus the scheduler step.</summary>
    public double[]? StepSeconds { get; set; }
    public double? StepSecondsMedian { get; set; }
    /// <summary>VAE decode of the batch (in pipeline mode also the VAE load and the image post-processing).</summary>
    public double? VaeSeconds { get; set; }
    /// <summary>Wall clock of the whole run after the GEMM probe: loads, T5, steps, VAE (and frees in between).</summary>
    public double? E2eSeconds { get; set; }
    /// <summary>e2e divided by the batch.</summary>
    public double? E2eSecondsPerImage { get; set; }
    /// <summary>T5 + steps + VAE, without the loads.</summary>
    public double? ComputeSeconds { get; set; }

    /// <summary>Peak resident set size of the process (VmHWM), in bytes, over the whole run.</summary>
    public long? PeakRssBytes { get; set; }
    public long? T5PeakRssBytes { get; set; }
    public long? TransformerPeakRssBytes { get; set; }
    public long? VaePeakRssBytes { get; set; }

    /// <summary>
    /// CUDA only: device memory in use (NVML, sampled every 2 ms; <see cref="GpuMemory"/>) before the run, and its
    /// peak over the run and per stage. With libtorch's caching allocator on (the default) a stage's peak includes
    /// what earlier stages left cached; <see cref="GpuMemoryCaching"/> false (PYTORCH_NO_CUDA_MEMORY_CACHING=1) makes
    /// each stage's figure its own.
    /// </summary>
    public long? GpuBaselineBytes { get; set; }
    public long? GpuPeakBytes { get; set; }
    public long? T5GpuPeakBytes { get; set; }
    public long? TransformerGpuPeakBytes { get; set; }
    public long? VaeGpuPeakBytes { get; set; }
    public long? GpuTotalBytes { get; set; }
    public bool? GpuMemoryCaching { get; set; }
    /// <summary>CUDA only: cuDNN's benchmark mode, as this run had it.</summary>
    public bool? CudnnBenchmark { get; set; }
    /// <summary>Whether the VAE's convolutions ran channels-last (PIXART_VAE_CHANNELS_LAST).</summary>
    public bool? VaeChannelsLast { get; set; }
    /// <summary>The offload policy of the run (none, model, sequential).</summary>
    public string Offload { get; set; } = "none";

    /// <summary>
    /// With --repeat N: N more end-to-end runs with every model kept loaded (T5 encode, the steps, VAE decode, the
    /// images copied to the CPU as 8-bit RGB), each timed to its end; the steady state a server sees.
    /// </summary>
    public double[]? SteadySeconds { get; set; }
    public double? SteadySecondsMedian { get; set; }
    /// <summary>Batch ÷ the median steady run.</summary>
    public double? ImagesPerSecond { get; set; }
    /// <summary>Per stage of the median steady run: T5, all steps, VAE decode (synchronised).</summary>
    public double? SteadyT5Seconds { get; set; }
    public double? SteadyDenoiseSeconds { get; set; }
    public double? SteadyVaeSeconds { get; set; }

    /// <summary>Matrix-multiply rate measured at the start of this run in this dtype (median), GFLOP/s.</summary>
    public double GemmGflops { get; set; }
    /// <summary>The same probe at the end of the run: far from <see cref="GemmGflops"/> means the machine's load changed during the run.</summary>
    public double? GemmGflopsEnd { get; set; }
    public double? TransformerStepFlops { get; set; }
    public double? T5Flops { get; set; }
    /// <summary>Tokens T5 ran on per prompt (the prompt's, &lt;/s&gt; included; the padding to 120 is not run).</summary>
    public int? T5Tokens { get; set; }
    public double? VaeFlops { get; set; }
    /// <summary>Transformer step FLOPs / median step time (for component t5 or vae: that stage's), GFLOP/s.</summary>
    public double? AchievedGflops { get; set; }
    public double? T5Gflops { get; set; }
    public double? VaeGflops { get; set; }
    /// <summary>Median step time / (step FLOPs / GEMM rate): 1.0 would be pure GEMM speed.</summary>
    public double? StepVsGemmFloor { get; set; }
    /// <summary>(T5 + steps·step + VAE FLOPs) / GEMM rate, seconds.</summary>
    public double? E2eGemmFloorSeconds { get; set; }

    /// <summary>
    /// The tiles the decode used (latents per side): --vae-tile's, or the pipeline's automatic ones when a whole decode
    /// would not have fit in the memory available; null when it decoded whole.
    /// </summary>
    public int? VaeTileLatents { get; set; }
    /// <summary>With --vae-tile and component vae: the largest and mean |tiled − untiled| on the [−1, 1] decode output.</summary>
    public double? VaeTiledMaxAbsDiff { get; set; }
    public double? VaeTiledMeanAbsDiff { get; set; }
    /// <summary>With --compare-fp32: the same run in fp32, images in [0, 1] compared.</summary>
    public double? Fp32ImageMaxAbsDiff { get; set; }
    public double? Fp32ImageMeanAbsDiff { get; set; }

    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);

    public static BenchResult FromJson(string json) =>
        JsonSerializer.Deserialize<BenchResult>(json, JsonOptions) ?? throw new JsonException("null bench result");

    /// <summary>A table for people.</summary>
    public string ToTable()
    {
        var sb = new StringBuilder();
        var ci = CultureInfo.InvariantCulture;
        void Row(string name, string? value) { if (value != null) sb.AppendLine(ci, $"  {name,-28} {value}"); }
        static string? S(double? s) => s is { } v ? v.ToString("0.000", CultureInfo.InvariantCulture) + " s" : null;
        static string? G(double? g) => g is { } v ? v.ToString("0", CultureInfo.InvariantCulture) + " GFLOP/s" : null;
        static string? T(double? f) => f is { } v ? (v / 1e12).ToString("0.000", CultureInfo.InvariantCulture) + " TFLOP" : null;
        static string? B(long? b) => b is { } v ? (v / (double)(1L << 30)).ToString("0.00", CultureInfo.InvariantCulture) + " GiB" : null;
        sb.AppendLine(ci, $"pixart bench: {Component}, {Size}, {Dtype}, batch {Batch}, {Steps} steps, {Threads} threads, {Device}, {Weights} ({Mode})");
        Row("load average (start/end)", $"{LoadAverageStart?.ToString("0.00", ci) ?? "?"} / {LoadAverageEnd?.ToString("0.00", ci) ?? "?"}");
        Row("GEMM rate (measured)", G(GemmGflops) + (GemmGflopsEnd is { } end ? $" at start, {end:0} at end" : ""));
        Row("load", S(LoadSeconds));
        Row("  t5 / transformer / vae", LoadSeconds is null ? null : $"{S(T5LoadSeconds) ?? "-"} / {S(TransformerLoadSeconds) ?? "-"} / {S(VaeLoadSeconds) ?? "-"}");
        Row("T5 encode", S(T5Seconds));
        Row("  T5 FLOPs, rate", T5Flops is null || T5Seconds is null ? null : $"{T(T5Flops)} ({T5Tokens} tokens), {G(T5Gflops)}");
        if (StepSeconds is { Length: > 0 })
            Row("steps", string.Join(", ", StepSeconds.Select(s => s.ToString("0.000", ci))) + " s");
        Row("step (median)", S(StepSecondsMedian));
        Row("  step FLOPs, rate", TransformerStepFlops is null || StepSecondsMedian is null ? null : $"{T(TransformerStepFlops)}, {G(AchievedGflops)}");
        Row("  step / GEMM floor", StepVsGemmFloor?.ToString("0.00", ci) + (StepVsGemmFloor is null ? null : "×"));
        Row("VAE decode", S(VaeSeconds) + (VaeTileLatents is { } t ? $" (tiles of {t} latents)" : ""));
        Row("  VAE FLOPs, rate", VaeFlops is null || VaeSeconds is null ? null : $"{T(VaeFlops)}, {G(VaeGflops)}");
        Row("  tiled vs untiled", VaeTiledMaxAbsDiff is { } d ? $"max {d:0.0000}, mean {VaeTiledMeanAbsDiff:0.00000} (decoder output in [-1, 1])" : null);
        Row("compute (no loads)", S(ComputeSeconds));
        Row("end to end", S(E2eSeconds));
        Row("  per image", Batch > 1 ? S(E2eSecondsPerImage) : null);
        Row("  GEMM floor", S(E2eGemmFloorSeconds));
        Row("peak RSS", B(PeakRssBytes));
        Row("  t5 / transformer / vae", PeakRssBytes is null ? null : $"{B(T5PeakRssBytes) ?? "-"} / {B(TransformerPeakRssBytes) ?? "-"} / {B(VaePeakRssBytes) ?? "-"}");
        Row("GPU memory peak", GpuPeakBytes is null ? null : $"{B(GpuPeakBytes)} (baseline {B(GpuBaselineBytes)}, of {B(GpuTotalBytes)}; {(GpuMemoryCaching == false ? "no caching" : "libtorch caching on")})");
        Row("  t5 / transformer / vae", GpuPeakBytes is null ? null : $"{B(T5GpuPeakBytes) ?? "-"} / {B(TransformerGpuPeakBytes) ?? "-"} / {B(VaeGpuPeakBytes) ?? "-"}");
        Row("VAE channels-last", VaeChannelsLast?.ToString());
        Row("cuDNN benchmark", CudnnBenchmark?.ToString());
        if (SteadySeconds is { Length: > 0 })
            Row("steady runs", string.Join(", ", SteadySeconds.Select(s => s.ToString("0.000", ci))) + " s");
        Row("  median, images/s", SteadySecondsMedian is { } m2 ? $"{m2:0.000} s, {ImagesPerSecond:0.00} images/s (T5 {SteadyT5Seconds:0.000} s, steps {SteadyDenoiseSeconds:0.000} s, VAE {SteadyVaeSeconds:0.000} s)" : null);
        Row("bf16 vs fp32 image", Fp32ImageMaxAbsDiff is { } m ? $"max {m:0.0000}, mean {Fp32ImageMeanAbsDiff:0.00000} (pixels in [0, 1])" : null);
        return sb.ToString();
    }
}
