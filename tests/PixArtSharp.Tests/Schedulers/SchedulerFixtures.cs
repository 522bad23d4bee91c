using System.Globalization;
using System.Text.Json;
using PixArtSharp.Loading;
using PixArtSharp.Schedulers;
using PixArtSharp.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Schedulers;

/// <summary>expected/schedulers.json + expected/scheduler_steps.safetensors (different stems, so not <see cref="Reference"/>).</summary>
public sealed class SchedulerFixtures : IDisposable
{
    private readonly SafeTensorsFile _file = OpenMapped();

    // SafeTensorsFile maps the file lazily on the first Load; doing that here keeps the mapping out of the
    // tests' dispose scopes (which would otherwise free it at the end of the first step).
    private static SafeTensorsFile OpenMapped()
    {
        var f = SafeTensorsFile.Open(Fixtures.Path("expected", "scheduler_steps.safetensors"));
        f.Load(f.Tensors.Keys.First()).Dispose();
        return f;
    }
    // The embedded DPM config holds lambda_min_clipped = -Infinity, which JsonDocument rejects; no test reads it.
    public JsonElement Json { get; } = JsonDocument.Parse(
        File.ReadAllText(Fixtures.Path("expected", "schedulers.json")).Replace("-Infinity", "\"-Infinity\"")).RootElement;

    public Tensor this[string name] => _file.Tensors.ContainsKey(name)
        ? _file.Load(name).clone()
        : throw new KeyNotFoundException($"scheduler_steps.safetensors has no tensor '{name}'.");

    internal static LCMScheduler Lcm() => LCMScheduler.FromConfig(Fixtures.Path("tiny-pixart-lcm", "scheduler"));
    internal static DPMSolverMultistepScheduler Dpm() => DPMSolverMultistepScheduler.FromConfig(Fixtures.Path("tiny-pixart", "scheduler"));

    public JsonElement Sequence(string name) =>
        Json.GetProperty("sequences").EnumerateArray().Single(s => s.GetProperty("name").GetString() == name);

    /// <summary>"torch.Generator().manual_seed(20241642)" → 20241642.</summary>
    public static long StepGeneratorSeed(JsonElement sequence)
    {
        string g = sequence.GetProperty("step_generator").GetString()!;
        int open = g.LastIndexOf('('), close = g.LastIndexOf(')');
        return long.Parse(g[(open + 1)..close], CultureInfo.InvariantCulture);
    }

    public static long[] Longs(JsonElement e) => e.EnumerateArray().Select(x => x.GetInt64()).ToArray();

    public void Dispose() => _file.Dispose();
}
