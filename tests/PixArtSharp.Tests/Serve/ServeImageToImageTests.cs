using System.Buffers.Binary;
using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using PixArtSharp.Cli.Serve;
using PixArtSharp.Imaging;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;

namespace PixArtSharp.Tests.Serve;

/// <summary>
/// Image-to-image through the server: the source uploaded as base64 in the JSON body. Its answer is the PNG
/// <c>pixart generate --image</c> writes for the same file, strength and seed; bad uploads are 400s naming the field.
/// </summary>
[Collection("Serve")]
public sealed class ServeImageToImageTests(ServeFixture fx, ITestOutputHelper output)
{
    private static string Input(string name) => Fixtures.Path("expected", "img2img", "inputs", name);

    private static Dictionary<string, object?> Body(string prompt, long seed, string image, double? strength = 0.5, int steps = 2) => new()
    {
        ["prompt"] = prompt,
        ["seed"] = seed,
        ["steps"] = steps,
        ["image"] = image,
        ["strength"] = strength,
    };

    private byte[] CliPng(string prompt, string source, double strength, long seed, int steps, params string[] extra)
    {
        string dir = Directory.CreateTempSubdirectory("pixart-serve-i2i-").FullName;
        try
        {
            string png = Path.Combine(dir, "out.png");
            var r = PixArtSharp.Tests.Cli.CliRunner.Run([
                "generate", prompt, "--model", fx.Folder, "--image", source, "--strength", strength.ToString(CultureInfo.InvariantCulture),
                "--seed", seed.ToString(CultureInfo.InvariantCulture), "--steps", steps.ToString(CultureInfo.InvariantCulture), "-o", png, "--quiet", .. extra]);
            Assert.True(r.ExitCode == 0, r.ToString());
            return File.ReadAllBytes(png);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task AnUploadedImageGivesThePngPixartGenerateWritesForTheSameFile()
    {
        await using var app = await TestApp.StartAsync(fx);
        string source = Input("gradient_disc_64x96.png");
        byte[] file = File.ReadAllBytes(source);
        var r = await Api.Post(app.Client, Body("a watercolor lighthouse", 31, Convert.ToBase64String(file)));
        var json = await Api.ReadJson(r);
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        byte[] served = Api.FirstPng(json);

        string parameters = json.GetProperty("data")[0].GetProperty("parameters").GetString()!;
        Assert.Contains("Size: 96x64", parameters);
        Assert.Contains("Denoising strength: 0.5", parameters);
        Assert.Contains($"Source image sha256: {Convert.ToHexStringLower(SHA256.HashData(file))}", parameters);
        var settings = json.GetProperty("settings");
        Assert.Equal(0.5, settings.GetProperty("strength").GetDouble());
        Assert.False(settings.GetProperty("resolution_binning").GetBoolean());

        Assert.Equal(CliPng("a watercolor lighthouse", source, 0.5, 31, 2), served);
        var decoded = ImageReader.Decode(served);
        Assert.Equal((96, 64), (decoded.Width, decoded.Height));

        // A data: URL is the same upload.
        var viaUrl = await Api.ReadJson(await Api.Post(app.Client, Body("a watercolor lighthouse", 31, "data:image/png;base64," + Convert.ToBase64String(file))));
        Assert.Equal(served, Api.FirstPng(viaUrl));
        // The strength matters: another strength, another image.
        var other = await Api.ReadJson(await Api.Post(app.Client, Body("a watercolor lighthouse", 31, Convert.ToBase64String(file), strength: 0.9)));
        Assert.NotEqual(served, Api.FirstPng(other));
        output.WriteLine($"img2img PNG {served.Length} bytes, identical to pixart generate --image's; {parameters.Replace('\n', '|')}");
    }

    [Fact]
    public async Task ResizeToFitScalesAnOddSizedImageLikeTheCli()
    {
        await using var app = await TestApp.StartAsync(fx);
        // 60×44: not a multiple of 16, so it needs resize_to_fit. The tiny model's area is 1024² → scale 1,
        // sides rounded down: 48×32.
        var pixels = new byte[60 * 44 * 3];
        for (int i = 0; i < pixels.Length; i++) pixels[i] = (byte)(i * 7 % 251);
        byte[] file = PngWriter.Encode(pixels, 60, 44, []);

        var refused = await Api.Post(app.Client, Body("a tree", 3, Convert.ToBase64String(file)));
        var error = (await Api.ReadJson(refused)).GetProperty("error");
        Assert.Equal(HttpStatusCode.BadRequest, refused.StatusCode);
        Assert.Equal("image", error.GetProperty("param").GetString());
        Assert.Contains("60x44", error.GetProperty("message").GetString());
        Assert.Contains("resize_to_fit", error.GetProperty("message").GetString());

        var body = Body("a tree", 3, Convert.ToBase64String(file));
        body["resize_to_fit"] = true;
        var json = await Api.ReadJson(await Api.Post(app.Client, body));
        byte[] served = Api.FirstPng(json);
        var decoded = ImageReader.Decode(served);
        Assert.Equal((48, 32), (decoded.Width, decoded.Height));

        string dir = Directory.CreateTempSubdirectory("pixart-serve-i2i-src-").FullName;
        try
        {
            string path = Path.Combine(dir, "odd.png");
            File.WriteAllBytes(path, file);
            Assert.Equal(CliPng("a tree", path, 0.5, 3, 2, "--resize-to-fit"), served);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    public static IEnumerable<object[]> BadUploads()
    {
        string good = Convert.ToBase64String(File.ReadAllBytes(Input("gradient_disc_80x64.png")));
        return
        [
            ["not base64 at all!", "image", "base64"],
            ["", "image", "empty"],
            ["data:image/png,rawbytes", "image", "base64"],
            [Convert.ToBase64String(Encoding.UTF8.GetBytes("this is a text file, not a picture")), "image", "uploaded image"],
            [Convert.ToBase64String(File.ReadAllBytes(Input("gradient_disc_80x64.png"))[..200]), "image", "uploaded image"],
            [Convert.ToBase64String(BombPng()), "image", "20000×20000"],
            [good + "|strength=0", "image", "base64"],
        ];
    }

    [Theory]
    [MemberData(nameof(BadUploads))]
    public async Task BadUploadsAnswer400NamingTheImage(string image, string param, string mentions)
    {
        await using var app = await TestApp.StartAsync(fx);
        var r = await Api.Post(app.Client, Body("x", 1, image));
        var error = (await Api.ReadJson(r)).GetProperty("error");
        Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
        Assert.Equal(param, error.GetProperty("param").GetString());
        string message = error.GetProperty("message").GetString()!;
        Assert.Contains(mentions, message);
        Assert.Equal(0, app.Queue.Pending + app.Queue.Running);
        output.WriteLine($"→ 400 {param}: {message}");
    }

    [Fact]
    public async Task ImageFieldsAreCheckedAgainstEachOther()
    {
        await using var app = await TestApp.StartAsync(fx);
        string good = Convert.ToBase64String(File.ReadAllBytes(Input("gradient_disc_80x64.png")));
        async Task Expect400(Dictionary<string, object?> body, string param, string mentions)
        {
            var r = await Api.Post(app.Client, body);
            var error = (await Api.ReadJson(r)).GetProperty("error");
            Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
            Assert.Equal(param, error.GetProperty("param").GetString());
            Assert.Contains(mentions, error.GetProperty("message").GetString());
        }
        await Expect400(new() { ["prompt"] = "x", ["strength"] = 0.5 }, "strength", "send 'image'");
        await Expect400(new() { ["prompt"] = "x", ["resize_to_fit"] = true }, "resize_to_fit", "send 'image'");
        await Expect400(new() { ["prompt"] = "x", ["image"] = good, ["width"] = 64 }, "width", "image's size");
        await Expect400(new() { ["prompt"] = "x", ["image"] = good, ["size"] = "64x64" }, "size", "image's size");
        await Expect400(new() { ["prompt"] = "x", ["image"] = good, ["strength"] = 1.5 }, "strength", "(0, 1]");
        await Expect400(new() { ["prompt"] = "x", ["image"] = good, ["strength"] = 0 }, "strength", "(0, 1]");
        // DPM-Solver++ runs int(steps × strength) steps: 2 × 0.3 → 0 steps is refused before any work.
        await Expect400(new() { ["prompt"] = "x", ["image"] = good, ["strength"] = 0.3, ["steps"] = 2, ["scheduler"] = "dpm-solver" }, "strength", "0 steps");
        Assert.Equal(0, app.Queue.Batches);
    }

    [Fact]
    public async Task AnImageRequestRunsAloneAndNeverJoinsATextBatch()
    {
        await using var app = await TestApp.StartAsync(fx, new ServeOptions { MaxBatch = 4 });
        var a = Api.Small("a castle", 11);
        var c = Api.Small("a forest", 12);
        string good = Convert.ToBase64String(File.ReadAllBytes(Input("gradient_disc_80x64.png")));
        string ida, idb, idc;
        using (app.Queue.Hold())
        {
            ida = (await Api.ReadJson(await Api.Post(app.Client, a, "?async=true"))).GetProperty("id").GetString()!;
            idb = (await Api.ReadJson(await Api.Post(app.Client, Body("a castle", 13, good), "?async=true"))).GetProperty("id").GetString()!;
            idc = (await Api.ReadJson(await Api.Post(app.Client, c, "?async=true"))).GetProperty("id").GetString()!;
        }
        var ja = await Api.WaitJob(app.Client, ida);
        var jb = await Api.WaitJob(app.Client, idb);
        var jc = await Api.WaitJob(app.Client, idc);
        Assert.Equal(2, ja.GetProperty("batch_size").GetInt32());
        Assert.Equal(1, jb.GetProperty("batch_size").GetInt32());
        Assert.Equal(2, jc.GetProperty("batch_size").GetInt32());
        Assert.Equal("succeeded", jb.GetProperty("status").GetString());
        var decoded = ImageReader.Decode(Api.FirstPng(jb.GetProperty("result")));
        Assert.Equal((64, 80), (decoded.Width, decoded.Height)); // the fixture's name is height×width
    }

    /// <summary>A ~100-byte PNG whose header claims 20000×20000 RGB (1.2 GB decoded): refused before decoding.</summary>
    private static byte[] BombPng()
    {
        byte[] png = PngWriter.Encode(new byte[16 * 16 * 3], 16, 16, []);
        // IHDR data starts at 16 (8 signature + 4 length + 4 type); its CRC covers type + 13 data bytes.
        BinaryPrimitives.WriteInt32BigEndian(png.AsSpan(16), 20000);
        BinaryPrimitives.WriteInt32BigEndian(png.AsSpan(20), 20000);
        BinaryPrimitives.WriteUInt32BigEndian(png.AsSpan(29), Crc32(png.AsSpan(12, 17)));
        return png;
    }

    private static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFFu;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
        }
        return crc ^ 0xFFFFFFFFu;
    }
}
