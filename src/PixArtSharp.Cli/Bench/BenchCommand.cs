using System.CommandLine;
using System.Globalization;
using PixArtSharp.Bench;
using static TorchSharp.torch;

namespace PixArtSharp.Cli.Bench;

/// <summary>
/// <c>pixart bench</c>: times the full-size PixArt-LCM stages (T5-XXL, PixArt-XL-2 1024-MS, SD VAE) on seeded
/// random weights or a local folder, against a GEMM rate measured in the same run; or, with
/// <c>--save-random-model DIR</c>, writes those random weights as a diffusers folder.
/// </summary>
public static class BenchCommand
{
    public static Command Create()
    {
        var component = new Option<string>("--component") { Description = "What to time: all (T5, steps, VAE in turn), t5, transformer or vae.", DefaultValueFactory = _ => "all" };
        var steps = new Option<int>("--steps") { Description = "Denoising steps (LCM: 4).", DefaultValueFactory = _ => 4 };
        var size = new Option<string?>("--size") { Description = "Image size in pixels: 1024, or HEIGHTxWIDTH such as 768x1344. Default: the model's (1024)." };
        var batch = new Option<int>("--batch") { Description = "Images per run.", DefaultValueFactory = _ => 1 };
        var dtype = new Option<string>("--dtype") { Description = "auto, fp32, bf16 or fp16: the dtype weights are held and computed in (auto: fp16 on CUDA, bf16 on CPUs with AVX-512-BF16 or AMX, else fp32).", DefaultValueFactory = _ => "auto" };
        dtype.AcceptOnlyFromAmong("auto", "fp32", "bf16", "fp16");
        var threads = new Option<int?>("--threads") { Description = "libtorch threads (default: libtorch's, the core count)." };
        var device = new Option<string>("--device") { Description = $"{DeviceSpec.Choices} (auto: a GPU when a CUDA libtorch and a GPU are there; see docs/gpu.md).", DefaultValueFactory = _ => "auto" };
        var offload = new Option<string>("--offload") { Description = $"GPU memory policy: {OffloadPolicy.Choices}.", DefaultValueFactory = _ => "none" };
        var model = new Option<string?>("--model") { Description = "A local diffusers folder to time instead of random weights. With --component all the timings are of the pipeline itself." };
        var variant = new Option<string?>("--variant") { Description = "Weights variant, e.g. fp16 (model.safetensors.index.fp16.json). With --save-random-model: store fp16 weights under that variant name." };
        var seed = new Option<long>("--seed") { Description = "Seed of the random weights and of the initial latents.", DefaultValueFactory = _ => 0 };
        var vaeTile = new Option<int>("--vae-tile") { Description = "Decode in tiles of this many latents (0: as the pipeline decides, whole unless it would not fit in the memory available; the tiles used are reported). With --component vae, also decodes whole and reports the difference.", DefaultValueFactory = _ => 0 };
        var compare = new Option<bool>("--compare-fp32") { Description = "With --model: run the pipeline again in fp32 and report the image difference." };
        var prompt = new Option<string?>("--prompt") { Description = "Prompt (with --model): T5 runs on its tokens, so its length sets the T5's cost." };
        var promptTokens = new Option<int>("--prompt-tokens") { HelpName = "N", Description = "Random weights: the fixed prompt's length in tokens, </s> included (1–120; T5 runs on these, not the padding).", DefaultValueFactory = _ => 25 };
        var tinyVae = new Option<bool>("--tiny-vae") { Description = "Decode with TAESD (AutoencoderTiny, random weights in its real config) instead of the SD VAE." };
        var t5Quant = new Option<string?>("--t5-quant") { HelpName = "TYPE", Description = "Write the random T5 as a GGUF file of this type (q8_0, q4_k, q5_k, f16, bf16) and load it as a user's file would be." };
        var textEncoder = new Option<string?>("--text-encoder") { HelpName = "FILE.gguf", Description = "Time a real T5 GGUF file (e.g. from city96/t5-v1_1-xxl-encoder-gguf) as the text encoder." };
        var repeat = new Option<int>("--repeat") { Description = "After the measured run, this many end-to-end runs with every model kept loaded (the steady state a server sees): median time and images/s. With --component vae: this many more decodes.", DefaultValueFactory = _ => 0 };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of the table." };
        var save = new Option<string?>("--save-random-model") { Description = "Write the seeded random full-size weights as a diffusers folder here (bf16, or fp16 with --variant fp16), then exit." };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "spiece.model to copy into a saved folder (default: the repo's fixtures, ../shared/fixtures/tokenizer/spiece.model)." };

        var cmd = new Command("bench", "Time the full-size PixArt-LCM stages (load, T5, per-step transformer, VAE, end to end, peak RSS, GFLOP/s vs a GEMM rate measured in the same run).");
        foreach (var o in new Option[] { component, steps, size, batch, dtype, threads, device, offload, tinyVae, t5Quant, textEncoder, model, variant, seed, vaeTile, compare, repeat, prompt, promptTokens, json, save, tokenizer })
            cmd.Add(o);

        // Errors go through CliApp.Guard like every command: one line, the shared exit codes (2 bad arguments, 3 model
        // not found, 4 corrupt weights, 5 out of memory).
        cmd.SetAction(CliApp.Guard((parse, cli, ct) =>
        {
            // The first thing that touches libtorch: the device decides which libtorch loads.
            var dev = DeviceSpec.Parse(parse.GetValue(device)).Resolve();
            var dt = DTypeChoice.Resolve(parse.GetValue(dtype), dev);
            if (parse.GetValue(save) is { } saveDir)
            {
                string? v = parse.GetValue(variant);
                var storeAs = v == "fp16" ? ScalarType.Float16 : dt;
                string spiece = parse.GetValue(tokenizer) ?? FindFixtureSpiece()
                    ?? throw new UsageException("No spiece.model found: pass --tokenizer PATH/spiece.model (the T5 tokenizer to copy into the folder).");
                if (parse.GetValue(threads) is { } st) PixArtSharp.TorchRuntime.SetThreads(st);
                var sw = System.Diagnostics.Stopwatch.StartNew();
                RandomModelWriter.Write(saveDir, parse.GetValue(seed), storeAs, v, spiece, s => cli.Err.WriteLine(s));
                cli.Err.WriteLine($"wrote {Path.GetFullPath(saveDir)} in {sw.Elapsed.TotalSeconds:0} s");
                return Task.FromResult(0);
            }
            var (h, w) = ParseSize(parse.GetValue(size));
            var options = new BenchOptions
            {
                Component = ParseComponent(parse.GetValue(component)!),
                Steps = parse.GetValue(steps),
                Height = h,
                Width = w,
                Batch = parse.GetValue(batch),
                DType = dt,
                Device = dev,
                Offload = OffloadPolicy.Parse(parse.GetValue(offload)),
                Threads = parse.GetValue(threads),
                ModelDir = parse.GetValue(model),
                Variant = parse.GetValue(variant),
                Seed = parse.GetValue(seed),
                VaeTileLatents = parse.GetValue(vaeTile),
                CompareFp32 = parse.GetValue(compare),
                Repeat = parse.GetValue(repeat),
                TinyVae = parse.GetValue(tinyVae),
                T5Quant = parse.GetValue(t5Quant),
                TextEncoder = parse.GetValue(textEncoder),
                Prompt = parse.GetValue(prompt) ?? new BenchOptions().Prompt,
                PromptTokens = parse.GetValue(promptTokens),
            };
            bool asJson = parse.GetValue(json);
            // Progress goes to stderr in both modes; stdout holds only the table or the JSON object.
            var result = BenchRunner.Run(options, s => cli.Err.WriteLine(s));
            cli.Out.WriteLine(asJson ? result.ToJson() : result.ToTable());
            return Task.FromResult(0);
        }));
        return cmd;
    }

    private static BenchComponent ParseComponent(string s) => s.ToLowerInvariant() switch
    {
        "all" => BenchComponent.All,
        "t5" or "text_encoder" => BenchComponent.T5,
        "transformer" => BenchComponent.Transformer,
        "vae" => BenchComponent.Vae,
        _ => throw new ArgumentException($"--component must be all, t5, transformer or vae, not '{s}'."),
    };

    /// <summary>"1024" → 1024×1024; "768x1344" → height 768, width 1344.</summary>
    private static (int? Height, int? Width) ParseSize(string? s)
    {
        if (string.IsNullOrWhiteSpace(s)) return (null, null);
        var parts = s.ToLowerInvariant().Split('x', '×');
        if (parts.Length is 1 or 2 && parts.All(p => int.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out int v) && v > 0))
        {
            int a = int.Parse(parts[0], CultureInfo.InvariantCulture);
            return (a, parts.Length == 2 ? int.Parse(parts[1], CultureInfo.InvariantCulture) : a);
        }
        throw new ArgumentException($"--size must be N or HEIGHTxWIDTH in pixels (e.g. 1024 or 768x1344), not '{s}'.");
    }

    /// <summary>The T5 tokenizer in the repo's fixtures (../shared/fixtures beside the repo), searched upward.</summary>
    private static string? FindFixtureSpiece()
    {
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
        {
            for (var d = new DirectoryInfo(start); d != null; d = d.Parent)
            {
                foreach (var rel in new[] { "shared/fixtures/tokenizer/spiece.model", "fixtures/tokenizer/spiece.model" })
                {
                    string p = Path.Combine(d.FullName, rel);
                    if (File.Exists(p)) return p;
                }
            }
        }
        return null;
    }
}
