using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using PixArtSharp.Imaging;
using PixArtSharp.Tests.Loading;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;
using VImage = NetVips.Image;

namespace PixArtSharp.Tests.Imaging;

/// <summary>
/// ImageReader on good and hostile files: the fixture PNGs decode to exactly what the fixtures used; truncated,
/// lying, oversized, mislabelled and unsupported files are ImageReadExceptions; EXIF orientation and alpha are
/// handled as documented.
/// </summary>
public class ImageReaderTests(ITestOutputHelper output)
{
    private static string FixturePng(string name) => Fixtures.Path("expected", "img2img", "inputs", name);

    /// <summary>An image whose four quadrants have distinct colours, so rotations and flips are visible.</summary>
    private static byte[] Quadrants(int w, int h, int channels = 3, byte alpha = 255)
    {
        var px = new byte[w * h * channels];
        byte[][] colours = [[220, 20, 20], [20, 220, 20], [20, 20, 220], [230, 230, 30]]; // TL red, TR green, BL blue, BR yellow
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                var c = colours[(y < h / 2 ? 0 : 2) + (x < w / 2 ? 0 : 1)];
                int o = (y * w + x) * channels;
                for (int k = 0; k < 3; k++) px[o + k] = c[k];
                if (channels == 4) px[o + 3] = alpha;
            }
        return px;
    }

    private static byte[] Encode(byte[] pixels, int w, int h, int bands, Func<VImage, byte[]> save)
    {
        using var img = VImage.NewFromMemory(pixels, w, h, bands, NetVips.Enums.BandFormat.Uchar);
        return save(img);
    }

    private static (byte R, byte G, byte B) Pixel(RgbImage img, int x, int y)
    {
        int o = (y * img.Width + x) * 3;
        return (img.Pixels[o], img.Pixels[o + 1], img.Pixels[o + 2]);
    }

    private static void Near((byte R, byte G, byte B) actual, (int R, int G, int B) expected, int tol, string what)
    {
        Assert.True(Math.Abs(actual.R - expected.R) <= tol && Math.Abs(actual.G - expected.G) <= tol && Math.Abs(actual.B - expected.B) <= tol,
            $"{what}: got ({actual.R},{actual.G},{actual.B}), expected ({expected.R},{expected.G},{expected.B}) ± {tol}");
    }

    private ImageReadException Refused(string path, string fragment, long maxPixels = ImageReader.DefaultMaxPixels)
    {
        var e = Assert.Throws<ImageReadException>(() => ImageReader.Read(path, maxPixels));
        Assert.Contains(fragment, e.Message);
        Assert.Contains(path, e.Message);
        output.WriteLine(e.Message);
        return e;
    }

    [Theory]
    [InlineData("gradient_disc_64x96.png", 96, 64)]
    [InlineData("gradient_disc_80x64.png", 64, 80)]
    public void FixtureInputsDecodeExactlyAsTheFixtureUsedThem(string name, int width, int height)
    {
        var img = ImageReader.Read(FixturePng(name));
        Assert.Equal(width, img.Width);
        Assert.Equal(height, img.Height);
        // The repository's own strict 8-bit RGB PNG decoder is an independent reference for the same bytes.
        var (w, h, rgb) = PngReader.DecodeRgb8(FixturePng(name));
        Assert.Equal((width, height), (w, h));
        Assert.Equal(rgb, img.Pixels);
    }

    [Fact]
    public void TruncatedPngIsRefused()
    {
        using var dir = new TempDir();
        var bytes = File.ReadAllBytes(FixturePng("gradient_disc_64x96.png"));
        Refused(dir.Write("truncated.png", bytes[..(bytes.Length / 2)]), "corrupt or truncated");
    }

    [Fact]
    public void PngWithACorruptedIdatIsRefused()
    {
        using var dir = new TempDir();
        var bytes = File.ReadAllBytes(FixturePng("gradient_disc_64x96.png"));
        int idat = IndexOf(bytes, "IDAT"u8) + 4;
        for (int i = idat + 8; i < idat + 40; i++) bytes[i] ^= 0x5A;
        Refused(dir.Write("garbled.png", bytes), "corrupt or truncated");
    }

    [Fact]
    public void JpegWithALyingHeaderIsRefused()
    {
        using var dir = new TempDir();
        var jpeg = Encode(Quadrants(64, 64), 64, 64, 3, i => i.JpegsaveBuffer(q: 90));
        // Patch the SOF0 frame header to claim 640×640 while the scan holds 64×64 worth of data.
        int sof = IndexOf(jpeg, [0xFF, 0xC0]);
        Assert.True(sof > 0);
        BinaryPrimitives.WriteUInt16BigEndian(jpeg.AsSpan(sof + 5), 640);
        BinaryPrimitives.WriteUInt16BigEndian(jpeg.AsSpan(sof + 7), 640);
        Refused(dir.Write("lying.jpg", jpeg), "corrupt or truncated");
    }

    [Fact]
    public void JpegClaimingTwentyThousandSquaredIsRefusedBeforeDecoding()
    {
        using var dir = new TempDir();
        var jpeg = Encode(Quadrants(64, 64), 64, 64, 3, i => i.JpegsaveBuffer(q: 90));
        int sof = IndexOf(jpeg, [0xFF, 0xC0]);
        BinaryPrimitives.WriteUInt16BigEndian(jpeg.AsSpan(sof + 5), 20000);
        BinaryPrimitives.WriteUInt16BigEndian(jpeg.AsSpan(sof + 7), 20000);
        Refused(dir.Write("bomb.jpg", jpeg), "20000×20000");
    }

    /// <summary>A valid-looking PNG of a few hundred bytes whose IHDR says side×side RGB, with one row of data.</summary>
    private static byte[] PngClaiming(int side)
    {
        var png = new MemoryStream();
        png.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        var ihdr = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr, side);
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), side);
        ihdr[8] = 8; ihdr[9] = 2;
        Chunk(png, "IHDR", ihdr);
        var z = new MemoryStream();
        using (var zs = new ZLibStream(z, CompressionLevel.SmallestSize, leaveOpen: true)) zs.Write(new byte[1 + 3 * side]); // one row
        Chunk(png, "IDAT", z.ToArray());
        Chunk(png, "IEND", []);
        return png.ToArray();
    }

    [Fact]
    public void TinyPngClaimingTwentyThousandSquaredIsRefusedBeforeDecoding()
    {
        using var dir = new TempDir();
        var bytes = PngClaiming(20000);   // 1.2 GB decoded
        Assert.True(bytes.Length < 200);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var e = Refused(dir.Write("bomb.png", bytes), "limit");
        Assert.Contains("20000×20000", e.Message);
        Assert.True(sw.ElapsedMilliseconds < 2000, $"took {sw.ElapsedMilliseconds} ms: the header check must come before decoding");
    }

    [Fact]
    public void WithoutAPixelLimitAnImageLargerThanOneArrayIsStillRefusedBeforeDecoding()
    {
        // 30000² RGB is 2.7 GB: more than a .NET array holds, so no caller's maxPixels can make it decode.
        using var dir = new TempDir();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var e = Refused(dir.Write("huge.png", PngClaiming(30000)), "more RGB data than one array holds", maxPixels: long.MaxValue);
        Assert.Contains("30000×30000", e.Message);
        Assert.True(sw.ElapsedMilliseconds < 2000, $"took {sw.ElapsedMilliseconds} ms: the size check must come before decoding");
    }

    [Fact]
    public void ThePixelLimitIsAParameter()
    {
        var img = ImageReader.Read(FixturePng("gradient_disc_64x96.png"), maxPixels: 64 * 96);
        Assert.Equal(96, img.Width);
        Refused(FixturePng("gradient_disc_64x96.png"), "the limit is 6,143", maxPixels: 64 * 96 - 1);
    }

    [Fact]
    public void TextFileNamedPngIsRefused()
    {
        using var dir = new TempDir();
        Refused(dir.WriteText("notes.png", "This is not an image, just some text.\n"), "not a PNG, JPEG or WebP image");
    }

    [Fact]
    public void EmptyAndMissingFilesAreRefused()
    {
        using var dir = new TempDir();
        Refused(dir.Write("empty.png", []), "empty");
        Refused(dir.Path("missing.png"), "does not exist");
    }

    [Fact]
    public void OtherFormatsAreRefusedEvenWhenLibvipsCouldReadThem()
    {
        using var dir = new TempDir();
        var tiff = Encode(Quadrants(16, 16), 16, 16, 3, i => i.TiffsaveBuffer());
        Refused(dir.Write("image.png", tiff), "not a PNG, JPEG or WebP image");
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"><rect width=\"10\" height=\"10\"/></svg>";
        Refused(dir.WriteText("image.svg.png", svg), "not a PNG, JPEG or WebP image");
        var ppm = Encoding.ASCII.GetBytes("P6\n2 2\n255\n").Concat(new byte[12]).ToArray();
        Refused(dir.Write("image.jpg", ppm), "not a PNG, JPEG or WebP image");
    }

    [Theory]
    [InlineData(1, 32, 16, 0, 0)]   // as stored: red top-left
    [InlineData(6, 16, 32, 0, 0)]   // rotate 90° clockwise to view: the stored bottom-left (blue) comes to the top-left
    [InlineData(3, 32, 16, 0, 0)]   // rotate 180°: yellow top-left
    [InlineData(8, 16, 32, 0, 0)]   // rotate 90° counter-clockwise: green top-left
    public void ExifOrientationIsApplied(int orientation, int width, int height, int x, int y)
    {
        using var dir = new TempDir();
        var jpeg = Encode(Quadrants(32, 16), 32, 16, 3, i =>
        {
            using var tagged = i.Mutate(m => m.Set(NetVips.GValue.GIntType, "orientation", orientation));
            return tagged.JpegsaveBuffer(q: 95);
        });
        var img = ImageReader.Read(dir.Write($"o{orientation}.jpg", jpeg));
        Assert.Equal((width, height), (img.Width, img.Height));
        (int, int, int) expected = orientation switch
        {
            1 => (220, 20, 20),
            6 => (20, 20, 220),
            3 => (230, 230, 30),
            _ => (20, 220, 20),
        };
        Near(Pixel(img, x + 2, y + 2), expected, 12, $"orientation {orientation} top-left");
    }

    [Fact]
    public void AlphaIsFlattenedOntoWhite()
    {
        using var dir = new TempDir();
        int w = 8, h = 4;
        var rgba = new byte[w * h * 4];
        for (int i = 0; i < w * h; i++)
        {
            int x = i % w;
            // columns 0-1 opaque red, 2-3 fully transparent black, 4-7 half-transparent blue
            (byte r, byte g, byte b, byte a) = x < 2 ? ((byte)200, (byte)10, (byte)10, (byte)255) : x < 4 ? ((byte)0, (byte)0, (byte)0, (byte)0) : ((byte)0, (byte)0, (byte)255, (byte)128);
            rgba[i * 4] = r; rgba[i * 4 + 1] = g; rgba[i * 4 + 2] = b; rgba[i * 4 + 3] = a;
        }
        var png = Encode(rgba, w, h, 4, i => i.PngsaveBuffer());
        var img = ImageReader.Read(dir.Write("alpha.png", png));
        Assert.Equal(w * h * 3, img.Pixels.Length);
        Assert.Equal(((byte)200, (byte)10, (byte)10), Pixel(img, 0, 0));
        Assert.Equal(((byte)255, (byte)255, (byte)255), Pixel(img, 2, 1));
        Near(Pixel(img, 5, 2), (127, 127, 255), 1, "half-transparent blue on white");
    }

    [Fact]
    public void WebpGreyAndSixteenBitPngsBecomeEightBitRgb()
    {
        using var dir = new TempDir();
        var src = Quadrants(16, 16);
        var webp = Encode(src, 16, 16, 3, i => i.WebpsaveBuffer(lossless: true));
        Assert.Equal(src, ImageReader.Read(dir.Write("q.webp", webp)).Pixels);

        var grey = new byte[16 * 16];
        for (int i = 0; i < grey.Length; i++) grey[i] = (byte)(i % 251);
        var greyPng = Encode(grey, 16, 16, 1, i => i.PngsaveBuffer());
        var g = ImageReader.Read(dir.Write("grey.png", greyPng));
        for (int i = 0; i < grey.Length; i++)
            Assert.True(g.Pixels[3 * i] == grey[i] && g.Pixels[3 * i + 1] == grey[i] && g.Pixels[3 * i + 2] == grey[i]);

        using (var img16 = VImage.NewFromMemory(src, 16, 16, 3, NetVips.Enums.BandFormat.Uchar))
        using (var wide = img16.Cast(NetVips.Enums.BandFormat.Ushort) * 257)
        using (var wide16 = wide.Cast(NetVips.Enums.BandFormat.Ushort))
        using (var tagged = wide16.Copy(interpretation: NetVips.Enums.Interpretation.Rgb16))
        {
            var png16 = tagged.PngsaveBuffer(bitdepth: 16);
            Assert.Equal(16, png16[24]); // IHDR bit depth
            Assert.Equal(src, ImageReader.Read(dir.Write("deep.png", png16)).Pixels);
        }
    }

    private static void Chunk(Stream s, string type, byte[] data)
    {
        var len = new byte[4];
        BinaryPrimitives.WriteInt32BigEndian(len, data.Length);
        s.Write(len);
        var td = Encoding.ASCII.GetBytes(type).Concat(data).ToArray();
        s.Write(td);
        var crc = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(crc, Crc32(td));
        s.Write(crc);
    }

    private static uint Crc32(byte[] data)
    {
        uint crc = 0xFFFFFFFFu;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
        }
        return crc ^ 0xFFFFFFFFu;
    }

    private static int IndexOf(byte[] haystack, ReadOnlySpan<byte> needle) => haystack.AsSpan().IndexOf(needle);
}
