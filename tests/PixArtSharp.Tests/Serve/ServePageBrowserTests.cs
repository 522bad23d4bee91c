using System.Text.Json;
using Microsoft.Playwright;
using Xunit.Abstractions;

namespace PixArtSharp.Tests.Serve;

/// <summary>
/// The web page in a real browser: Debian's Chromium (/usr/bin/chromium, installed by the test project's EnsureChromium step and by .ci/run) driven by
/// Microsoft.Playwright with that executable — Playwright's own browser download is never used.
/// </summary>
[Collection("Serve")]
public sealed class ServePageBrowserTests(ServeFixture fx, ITestOutputHelper output)
{
    public const string Chromium = "/usr/bin/chromium";

    /// <summary>Where the test leaves its screenshot (beside the test binaries).</summary>
    public static string ScreenshotPath => Path.Combine(AppContext.BaseDirectory, "serve-page.png");

    [Fact]
    public async Task TypingAPromptAndGeneratingShowsTheImageWithItsParameters()
    {
        Assert.True(File.Exists(Chromium), $"{Chromium} is missing: install Debian's chromium package (apt-get install -y chromium; .ci/run does it).");
        await using var app = await TestApp.StartAsync(fx, kestrel: true);

        using var playwright = await Playwright.CreateAsync();
        await using var browser = await Launch(playwright);
        var (page, consoleErrors) = await NewPage(browser);
        var offsite = new List<string>();
        page.Request += (_, r) => { if (!r.Url.StartsWith(app.BaseUrl!, StringComparison.Ordinal) && !r.Url.StartsWith("blob:", StringComparison.Ordinal) && !r.Url.StartsWith("data:", StringComparison.Ordinal)) offsite.Add(r.Url); };

        await page.GotoAsync(app.BaseUrl + "/");
        // The form is filled from /v1/models: the ten styles and the aspect-ratio bins.
        await WaitFor(page, "() => document.querySelectorAll('#style option').length === 10");
        Assert.Equal("tiny-pixart-lcm · lcm · default 1024×1024, 4 steps", await page.TextContentAsync("#model"));
        Assert.True(await page.Locator("#aspect option").CountAsync() > 20);

        await page.FillAsync("#prompt", "a lighthouse on a cliff at sunset");
        await page.SelectOptionAsync("#style", "Cinematic");
        await page.SelectOptionAsync("#aspect", "768x1344");
        Assert.Equal("768", await page.InputValueAsync("#width"));
        Assert.Equal("1344", await page.InputValueAsync("#height"));
        await page.FillAsync("#width", "384");
        await page.FillAsync("#height", "256");
        await page.FillAsync("#steps", "2");
        await page.FillAsync("#n", "2");
        await page.UncheckAsync("#binning"); // the tiny model's bins are 1024-sized: keep the test fast
        await page.UncheckAsync("#randomize");
        await page.FillAsync("#seed", "77");
        var clock = System.Diagnostics.Stopwatch.StartNew();
        await page.ClickAsync("#generate");

        await page.WaitForSelectorAsync(".card img", new PageWaitForSelectorOptions { Timeout = 90_000 });
        await WaitFor(page, "() => [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)");
        output.WriteLine($"generate → 2 images shown in {clock.ElapsedMilliseconds} ms");
        Assert.Equal(2, await page.Locator(".card").CountAsync());
        Assert.Equal(384, await page.EvalOnSelectorAsync<int>(".card img", "i => i.naturalWidth"));
        Assert.Equal(256, await page.EvalOnSelectorAsync<int>(".card img", "i => i.naturalHeight"));
        string parameters = (await page.TextContentAsync(".card pre"))!;
        Assert.StartsWith("cinematic still a lighthouse on a cliff at sunset", parameters);
        Assert.Contains("Seed: 77, Size: 384x256", parameters);
        Assert.Equal("pixart-77-1.png", await page.GetAttributeAsync(".card a[download]", "download"));
        Assert.StartsWith("done", await page.TextContentAsync("#status"));
        Assert.Equal(1.0, await page.EvalOnSelectorAsync<double>("#progress", "p => p.value"));

        // The download link holds exactly the PNG the API gives for the same request.
        string served = await DownloadedPngBase64(page);
        var api = await Api.ReadJson(await Api.Post(app.Client, new Dictionary<string, object?>
        {
            ["prompt"] = "a lighthouse on a cliff at sunset",
            ["negative_prompt"] = "",
            ["style"] = "Cinematic",
            ["width"] = 384,
            ["height"] = 256,
            ["steps"] = 2,
            ["guidance"] = 0,
            ["n"] = 2,
            ["seed"] = 77,
            ["resolution_binning"] = false,
        }));
        Assert.Equal(api.GetProperty("data")[0].GetProperty("b64_json").GetString(), served);

        await page.ScreenshotAsync(new PageScreenshotOptions { Path = ScreenshotPath, FullPage = true });
        Assert.True(new FileInfo(ScreenshotPath).Length > 10_000);
        Assert.Empty(consoleErrors);
        Assert.Empty(offsite);
        output.WriteLine($"screenshot: {ScreenshotPath} ({new FileInfo(ScreenshotPath).Length} bytes); status '{await page.TextContentAsync("#status")}'");
    }

    [Fact]
    public async Task ChoosingASourceImageAndAStrengthGeneratesFromIt()
    {
        await using var app = await TestApp.StartAsync(fx, kestrel: true);
        using var playwright = await Playwright.CreateAsync();
        await using var browser = await Launch(playwright);
        var (page, consoleErrors) = await NewPage(browser);
        await page.GotoAsync(app.BaseUrl + "/");
        await WaitFor(page, "() => document.querySelectorAll('#style option').length === 10");
        Assert.True(await page.IsHiddenAsync("#i2i-controls"));
        Assert.True(await page.IsHiddenAsync("#source-preview")); // no empty image box before a file is chosen
        // The sampler list comes from the model, and choosing one sets its own defaults.
        Assert.Equal("lcm", await page.InputValueAsync("#scheduler"));
        await page.SelectOptionAsync("#scheduler", "sa-solver");
        Assert.Equal(("25", "3"), (await page.InputValueAsync("#steps"), await page.InputValueAsync("#guidance")));
        await page.SelectOptionAsync("#scheduler", "lcm");
        Assert.Equal(("4", "0"), (await page.InputValueAsync("#steps"), await page.InputValueAsync("#guidance")));

        string source = PixArtSharp.Tests.Support.Fixtures.Path("expected", "img2img", "inputs", "gradient_disc_64x96.png");
        await page.SetInputFilesAsync("#source", source);
        await WaitFor(page, "() => !document.getElementById('source-preview').hidden && document.getElementById('source-preview').naturalWidth === 96");
        Assert.True(await page.IsVisibleAsync("#i2i-controls"));
        Assert.True(await page.IsDisabledAsync("#width"));   // the output has the image's size
        Assert.True(await page.IsDisabledAsync("#binning"));
        Assert.Equal("gradient_disc_64x96.png", await page.TextContentAsync("#drop-text"));
        await page.FillAsync("#strength", "0.6");
        Assert.Equal("0.60", await page.TextContentAsync("#strength-value"));
        await page.FillAsync("#prompt", "a watercolor lighthouse");
        await page.FillAsync("#steps", "2");
        await page.UncheckAsync("#randomize");
        await page.FillAsync("#seed", "31");
        await page.ClickAsync("#generate");

        await page.WaitForSelectorAsync(".card img", new PageWaitForSelectorOptions { Timeout = 90_000 });
        await WaitFor(page, "() => [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)");
        Assert.Equal(96, await page.EvalOnSelectorAsync<int>(".card img", "i => i.naturalWidth"));
        Assert.Equal(64, await page.EvalOnSelectorAsync<int>(".card img", "i => i.naturalHeight"));
        string parameters = (await page.TextContentAsync(".card pre"))!;
        Assert.Contains("Seed: 31, Size: 96x64", parameters);
        Assert.Contains("Denoising strength: 0.6", parameters);
        Assert.Contains("Source image sha256: ", parameters);
        string shot = Path.Combine(AppContext.BaseDirectory, "serve-page-img2img.png");
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = shot, FullPage = true });

        // The page's download equals the API's answer for the same upload.
        string served = await DownloadedPngBase64(page);
        var api = await Api.ReadJson(await Api.Post(app.Client, new Dictionary<string, object?>
        {
            ["prompt"] = "a watercolor lighthouse",
            ["negative_prompt"] = "",
            ["style"] = "(No style)",
            ["steps"] = 2,
            ["guidance"] = 0,
            ["n"] = 1,
            ["seed"] = 31,
            ["image"] = Convert.ToBase64String(File.ReadAllBytes(source)),
            ["strength"] = 0.6,
            ["resize_to_fit"] = true,
        }));
        Assert.Equal(api.GetProperty("data")[0].GetProperty("b64_json").GetString(), served);

        // Removing the image brings back text-to-image.
        await page.ClickAsync("#clear-source");
        Assert.True(await page.IsHiddenAsync("#i2i-controls"));
        Assert.False(await page.IsDisabledAsync("#width"));
        Assert.Empty(consoleErrors);
        output.WriteLine($"img2img in the page: 96x64 result, parameters '{parameters.Replace('\n', '|')}'; screenshot {shot}");
    }

    [Fact]
    public async Task WithATokenThePageAsksForItThenGenerates()
    {
        await using var app = await TestApp.StartAsync(fx, new PixArtSharp.Cli.Serve.ServeOptions { Token = "page-token-123" }, kestrel: true);
        using var playwright = await Playwright.CreateAsync();
        await using var browser = await Launch(playwright);
        var page = await browser.NewPageAsync();
        await page.GotoAsync(app.BaseUrl + "/");
        await WaitFor(page, "() => !document.getElementById('token-row').hidden && !document.getElementById('error').hidden");
        Assert.Contains("API token", await page.TextContentAsync("#error"));
        Assert.Equal(0, await page.Locator("#style option").CountAsync());

        await page.FillAsync("#token", "page-token-123");
        await page.PressAsync("#token", "Tab"); // change → the page retries with the token
        await WaitFor(page, "() => document.querySelectorAll('#style option').length === 10");
        Assert.True(await page.IsHiddenAsync("#error"));
        await page.FillAsync("#prompt", "a small boat");
        await page.FillAsync("#width", "256");
        await page.FillAsync("#height", "256");
        await page.FillAsync("#steps", "1");
        await page.UncheckAsync("#binning");
        await page.ClickAsync("#generate");
        await page.WaitForSelectorAsync(".card img", new PageWaitForSelectorOptions { Timeout = 60_000 });
        Assert.Contains("a small boat", await page.TextContentAsync(".card pre"));
    }

    /// <summary>
    /// A server started with previews (tiny-taesd as --preview-vae): mid-run the page shows the step's frame (a data:
    /// URL) before the final image arrives; the screenshot serve-page-preview.png shows it. Steps are slowed by the
    /// test hook so the tiny model's run can be watched.
    /// </summary>
    [Fact]
    public async Task LivePreviewShowsTheImageFormingBeforeTheResult()
    {
        await using var app = await TestApp.StartAsync(fx, kestrel: true);
        using var decoder = PixArtSharp.Pipeline.PreviewDecoder.Load(PixArtSharp.Tests.Support.Fixtures.Path("taesd", "tiny-taesd"));
        app.Queue.Preview = decoder;
        PixArtSharp.Cli.Serve.PreviewFrames.TestStepDelayMs = 700;
        try
        {
            using var playwright = await Playwright.CreateAsync();
            await using var browser = await Launch(playwright);
            var (page, consoleErrors) = await NewPage(browser);
            await page.GotoAsync(app.BaseUrl + "/");
            await WaitFor(page, "() => document.querySelectorAll('#style option').length === 10");
            Assert.True(await page.IsHiddenAsync("#live-preview"));
            await page.FillAsync("#prompt", "a lighthouse on a cliff at sunset");
            await page.FillAsync("#width", "256");
            await page.FillAsync("#height", "256");
            await page.FillAsync("#steps", "4");
            await page.UncheckAsync("#binning");
            await page.UncheckAsync("#randomize");
            await page.FillAsync("#seed", "5");
            await page.ClickAsync("#generate");

            // Mid-run: a frame is shown and decoded, and no final image yet.
            await WaitFor(page, "() => { const p = document.getElementById('live-preview'); return !p.hidden && p.src.startsWith('data:image/jpeg;base64,') && p.complete && p.naturalWidth > 0; }");
            Assert.Equal(0, await page.Locator(".card").CountAsync());
            Assert.Equal(256, await page.EvalOnSelectorAsync<int>("#live-preview", "i => i.naturalWidth"));
            string status = (await page.TextContentAsync("#status"))!;
            Assert.StartsWith("step ", status);
            string shot = Path.Combine(AppContext.BaseDirectory, "serve-page-preview.png");
            await page.ScreenshotAsync(new PageScreenshotOptions { Path = shot, FullPage = true });
            Assert.True(new FileInfo(shot).Length > 10_000);

            // Then the result: the gallery has it and the preview is gone.
            await page.WaitForSelectorAsync(".card img", new PageWaitForSelectorOptions { Timeout = 90_000 });
            await WaitFor(page, "() => document.getElementById('live-preview').hidden");
            Assert.Empty(consoleErrors);
            output.WriteLine($"preview frame shown at '{status}', before the result; screenshot {shot} ({new FileInfo(shot).Length} bytes)");
        }
        finally
        {
            PixArtSharp.Cli.Serve.PreviewFrames.TestStepDelayMs = 0;
        }
    }

    /// <summary>The bytes behind the first gallery card's download link, as base64 (as the API answers them).</summary>
    private static Task<string> DownloadedPngBase64(IPage page) => page.EvalOnSelectorAsync<string>(".card a[download]", """
        async a => {
          const bytes = new Uint8Array(await (await fetch(a.href)).arrayBuffer());
          let s = ""; for (const b of bytes) s += String.fromCharCode(b);
          return btoa(s);
        }
        """);

    /// <summary>A 1280×860 page whose console errors are collected (the tests expect none).</summary>
    private static async Task<(IPage Page, List<string> ConsoleErrors)> NewPage(IBrowser browser)
    {
        var page = await browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1280, Height = 860 } });
        var consoleErrors = new List<string>();
        page.Console += (_, m) => { if (m.Type == "error") consoleErrors.Add($"{m.Text} ({m.Location})"); };
        return (page, consoleErrors);
    }

    private static Task<IBrowser> Launch(IPlaywright playwright) => playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
    {
        ExecutablePath = Chromium,
        Headless = true,
        Args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
    });

    /// <summary>
    /// Polls a predicate from the test side. Playwright's WaitForFunction polls with eval inside the page, which the
    /// page's Content-Security-Policy (no 'unsafe-eval') rightly forbids; Evaluate runs over the DevTools protocol.
    /// </summary>
    private static async Task WaitFor(IPage page, string predicate)
    {
        var until = DateTime.UtcNow.AddSeconds(60);
        while (!await page.EvaluateAsync<bool>(predicate))
        {
            if (DateTime.UtcNow > until) throw new TimeoutException($"the page never satisfied {predicate}");
            await Task.Delay(50);
        }
    }
}
