namespace PixArtSharp.Hub;

/// <summary>
/// Where and how to reach the Hub, read from the same environment variables as Python's huggingface_hub
/// (v0.23 <c>constants.py</c>), so both share one cache and one login:
/// <list type="bullet">
/// <item><c>HF_ENDPOINT</c> (default https://huggingface.co)</item>
/// <item>cache: <c>HF_HUB_CACHE</c>, else legacy <c>HUGGINGFACE_HUB_CACHE</c>, else <c>$HF_HOME/hub</c>;
/// <c>HF_HOME</c> defaults to <c>$XDG_CACHE_HOME/huggingface</c>, i.e. <c>~/.cache/huggingface</c></item>
/// <item>token: <c>HF_TOKEN</c>, else legacy <c>HUGGING_FACE_HUB_TOKEN</c>, else the file <c>HF_TOKEN_PATH</c>
/// (default <c>$HF_HOME/token</c>, written by <c>huggingface-cli login</c>)</item>
/// <item><c>HF_HUB_OFFLINE</c>: 1/ON/YES/TRUE means no network at all</item>
/// </list>
/// </summary>
public sealed record HubSettings
{
    /// <summary>The public Hub, used when <c>HF_ENDPOINT</c> is unset.</summary>
    public const string DefaultEndpoint = "https://huggingface.co";

    /// <summary>Base URL without trailing slash.</summary>
    public string Endpoint { get; init; } = DefaultEndpoint;
    /// <summary>The hub cache root (the folder holding <c>models--org--name</c>).</summary>
    public required string CacheDir { get; init; }
    /// <summary>The access token sent as a bearer token (gated or private repos); null = anonymous.</summary>
    public string? Token { get; init; }
    /// <summary>No network at all: models must already be in the cache (<c>HF_HUB_OFFLINE</c>).</summary>
    public bool Offline { get; init; }
    /// <summary>Time allowed for a HEAD/API answer or a connection (huggingface_hub: HF_HUB_ETAG_TIMEOUT, 10 s).</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>Time a file download may stall without a byte arriving before it counts as a broken connection.</summary>
    public TimeSpan ReadTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>Settings from this process's environment.</summary>
    public static HubSettings FromEnvironment() =>
        FromEnvironment(Environment.GetEnvironmentVariable, Environment.GetFolderPath(Environment.SpecialFolder.UserProfile));

    /// <summary>Settings from an arbitrary variable lookup (testable without touching the process environment).</summary>
    internal static HubSettings FromEnvironment(Func<string, string?> env, string userHome)
    {
        string? Get(string name) => env(name) is { Length: > 0 } v ? v : null;
        string Expand(string p) => p == "~" ? userHome : p.StartsWith("~/", StringComparison.Ordinal) ? Path.Combine(userHome, p[2..]) : p;

        string hfHome = Expand(Get("HF_HOME") ?? Path.Combine(Get("XDG_CACHE_HOME") ?? Path.Combine(userHome, ".cache"), "huggingface"));
        string cache = Expand(Get("HF_HUB_CACHE") ?? Get("HUGGINGFACE_HUB_CACHE") ?? Path.Combine(hfHome, "hub"));
        string endpoint = (Get("HF_ENDPOINT") ?? DefaultEndpoint).TrimEnd('/');

        string? token = Get("HF_TOKEN") ?? Get("HUGGING_FACE_HUB_TOKEN");
        if (token == null)
        {
            string tokenPath = Expand(Get("HF_TOKEN_PATH") ?? Path.Combine(hfHome, "token"));
            try
            {
                if (File.Exists(tokenPath)) token = File.ReadAllText(tokenPath).Trim() is { Length: > 0 } t ? t : null;
            }
            catch (IOException) { } // an unreadable token file means no token, as in huggingface_hub
            catch (UnauthorizedAccessException) { }
        }
        else token = token.Trim();

        var settings = new HubSettings
        {
            Endpoint = endpoint,
            CacheDir = cache,
            Token = token,
            Offline = IsTrue(Get("HF_HUB_OFFLINE")),
        };
        if (double.TryParse(Get("HF_HUB_ETAG_TIMEOUT"), System.Globalization.CultureInfo.InvariantCulture, out double etagTimeout) && etagTimeout > 0)
            settings = settings with { RequestTimeout = TimeSpan.FromSeconds(etagTimeout) };
        return settings;
    }

    // huggingface_hub's _is_true: "1", "ON", "YES", "TRUE" in any case.
    private static bool IsTrue(string? v) => v != null && v.Trim().ToUpperInvariant() is "1" or "ON" or "YES" or "TRUE";
}
