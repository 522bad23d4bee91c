namespace PixArtSharp.Cli.Serve;

/// <summary>What <c>pixart serve</c> was started with (its command-line options).</summary>
public sealed record ServeOptions
{
    /// <summary>A diffusers folder or a Hub id.</summary>
    public string Model { get; init; } = "PixArt-alpha/PixArt-LCM-XL-2-1024-MS";
    /// <summary>Hub branch, tag or commit (a Hub id only).</summary>
    public string? Revision { get; init; }
    /// <summary>Weights variant, e.g. fp16.</summary>
    public string? Variant { get; init; }
    /// <summary>Components from elsewhere (folders or Hub ids), as for <c>pixart generate</c>.</summary>
    public string? TextEncoder { get; init; }
    /// <summary>The transformer from elsewhere.</summary>
    public string? Transformer { get; init; }
    /// <summary>The VAE from elsewhere.</summary>
    public string? Vae { get; init; }
    /// <summary>LoRA adapters (PATH[:SCALE]), fixed at start-up: requests never name files.</summary>
    public IReadOnlyList<string> Loras { get; init; } = [];
    /// <summary>auto, fp32, bf16 or fp16.</summary>
    public string DType { get; init; } = "auto";
    /// <summary>auto, cpu, cuda or cuda:N.</summary>
    public string Device { get; init; } = "auto";
    /// <summary>none, model or sequential.</summary>
    public string Offload { get; init; } = "none";
    /// <summary>auto (on CUDA only), on or off: one throw-away generation after loading, before the port answers.</summary>
    public string WarmUp { get; init; } = "auto";
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>0 picks a free port (tests).</summary>
    public int Port { get; init; } = 7860;
    /// <summary>When set, every /v1 call needs <c>Authorization: Bearer &lt;token&gt;</c>.</summary>
    public string? Token { get; init; }
    /// <summary>Requests waiting (not yet running) before new ones get 429.</summary>
    public int MaxQueue { get; init; } = 32;
    /// <summary>Compatible requests run together in one pipeline call, up to this many.</summary>
    public int MaxBatch { get; init; } = 4;
    /// <summary>Finished jobs kept for GET /v1/jobs/{id}.</summary>
    public int KeepFinished { get; init; } = 64;
    /// <summary>Live previews (--preview tiny|none, --preview-vae ID|DIR; see PreviewSetup) on the progress events.</summary>
    public string? Preview { get; init; }
    public string? PreviewVae { get; init; }
    /// <summary>Prompt texts whose T5 output the pipeline keeps (an LRU); 0 = off.</summary>
    public int PromptCacheEntries { get; init; } = 64;

    public void Validate()
    {
        if (Port is < 0 or > 65535) throw new ArgumentException($"--port must be between 0 and 65535, got {Port}.", "--port");
        if (MaxQueue < 1) throw new ArgumentException($"--max-queue must be at least 1, got {MaxQueue}.", "--max-queue");
        if (MaxBatch < 1) throw new ArgumentException($"--max-batch must be at least 1, got {MaxBatch}.", "--max-batch");
        if (PromptCacheEntries < 0) throw new ArgumentException($"--prompt-cache must be 0 (off) or more, got {PromptCacheEntries}.", "--prompt-cache");
        PreviewSetup.Wanted(Preview, PreviewVae); // --preview tiny|none, checked before the model loads
        if (Token is { } t && (t.Length < 8 || t.Any(char.IsWhiteSpace)))
            throw new ArgumentException("--token must be at least 8 characters with no spaces.", "--token");
        if (string.IsNullOrWhiteSpace(Host)) throw new ArgumentException("--host must not be empty.", "--host");
    }
}
