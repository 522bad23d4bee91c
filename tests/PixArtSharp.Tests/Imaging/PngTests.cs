using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using PixArtSharp.Imaging;
using PixArtSharp.Tests.Loading;
using PixArtSharp.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Imaging;

public class PngTests
{
    private static byte[] RandomRgb(int w, int h, int seed)
    {
        var rng = new Random(seed);
        var px = new byte[w * h * 3];
        // Smooth gradients plus noise, so the writer's filter heuristic picks different filters on different rows.
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int c = 0; c < 3; c++)
                    px[(y * w + x) * 3 + c] = (byte)((x * (c + 1) + y * 3 + (y % 3 == 0 ? rng.Next(256) : 0)) & 0xFF);
        return px;
    }

    private static List<string> ChunkTypes(byte[] png)
    {
        var types = new List<string>();
        for (int pos = 8; pos < png.Length;)
        {
            int len = BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(pos));
            types.Add(Encoding.ASCII.GetString(png, pos + 4, 4));
            pos += 12 + len;
        }
        return types;
    }

    [Fact]
    public void PixelsAndTextChunksRoundTrip()
    {
        using var dir = new TempDir();
        string path = dir.Path("out.png");
        var px = RandomRgb(37, 23, 1);
        var text = new List<(string, string)>
        {
            ("prompt", "a cat, \"photo\"\nsecond line"),
            ("parameters", "steps: 4, seed: 1, café"),
            ("Comment", "日本語のプロンプト ✓"),
            ("negative_prompt", ""),
            ("prompt", "a repeated keyword keeps its place"),
        };
        PngWriter.Write(path, px, 37, 23, text);
        Assert.Equal(new[] { "out.png" }, Directory.GetFiles(dir.Root).Select(Path.GetFileName));

        var (w, h, rgb) = PngReader.DecodeRgb8(path);
        Assert.Equal((37, 23), (w, h));
        Assert.Equal(px, rgb);
        Assert.Equal(text, PngReader.ReadTextChunks(path));
        // Latin-1 text goes to tEXt, the rest to iTXt; IHDR first, IEND last.
        Assert.Equal(new[] { "IHDR", "tEXt", "tEXt", "iTXt", "tEXt", "tEXt", "IDAT", "IEND" }, ChunkTypes(File.ReadAllBytes(path)));
    }

    [Fact]
    public void WriterUsesSeveralFilterTypesAndTheDecoderUndoesThem()
    {
        var px = RandomRgb(64, 48, 2);
        byte[] png = PngWriter.Encode(px, 64, 48, []);
        // Inflate the IDAT and look at each row's filter byte.
        int pos = 8;
        var idat = new MemoryStream();
        while (pos < png.Length)
        {
            int len = BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(pos));
            if (Encoding.ASCII.GetString(png, pos + 4, 4) == "IDAT") idat.Write(png, pos + 8, len);
            pos += 12 + len;
        }
        idat.Position = 0;
        var raw = new byte[48 * (64 * 3 + 1)];
        using (var z = new ZLibStream(idat, CompressionMode.Decompress)) z.ReadExactly(raw);
        var filters = Enumerable.Range(0, 48).Select(y => raw[y * (64 * 3 + 1)]).Distinct().ToList();
        Assert.True(filters.Count >= 2, $"filters used: {string.Join(",", filters)}");
    }

    /// <summary>A PNG built here, independently of the writer: each row uses filter type y % 5.</summary>
    [Fact]
    public void DecoderHandlesEveryFilterType()
    {
        const int w = 7, h = 10, stride = w * 3;
        var px = RandomRgb(w, h, 3);
        var raw = new List<byte>();
        for (int y = 0; y < h; y++)
        {
            int f = y % 5;
            raw.Add((byte)f);
            for (int i = 0; i < stride; i++)
            {
                int a = i >= 3 ? px[y * stride + i - 3] : 0, b = y > 0 ? px[(y - 1) * stride + i] : 0, c = i >= 3 && y > 0 ? px[(y - 1) * stride + i - 3] : 0;
                int p = a + b - c, pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
                int pred = f switch { 0 => 0, 1 => a, 2 => b, 3 => (a + b) / 2, _ => pa <= pb && pa <= pc ? a : pb <= pc ? b : c };
                raw.Add((byte)(px[y * stride + i] - pred));
            }
        }
        var zs = new MemoryStream();
        using (var z = new ZLibStream(zs, CompressionLevel.Fastest, leaveOpen: true)) z.Write(raw.ToArray());
        var ihdr = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr, w);
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), h);
        ihdr[8] = 8; ihdr[9] = 2;
        var file = new MemoryStream();
        file.Write([137, 80, 78, 71, 13, 10, 26, 10]);
        Chunk(file, "IHDR", ihdr);
        var idat = zs.ToArray();
        Chunk(file, "IDAT", idat[..(idat.Length / 2)]); // split across two IDAT chunks
        Chunk(file, "IDAT", idat[(idat.Length / 2)..]);
        Chunk(file, "IEND", []);
        using var dir = new TempDir();
        string path = dir.Write("filters.png", file.ToArray());
        var (dw, dh, rgb) = PngReader.DecodeRgb8(path);
        Assert.Equal((w, h), (dw, dh));
        Assert.Equal(px, rgb);
    }

    private static void Chunk(Stream s, string type, byte[] data)
    {
        var td = Encoding.ASCII.GetBytes(type).Concat(data).ToArray();
        // Bitwise CRC-32, written independently of the writer's table version.
        uint crc = 0xFFFFFFFF;
        foreach (byte b in td)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xEDB88320 : crc >> 1;
        }
        crc ^= 0xFFFFFFFF;
        var buf = new byte[4];
        BinaryPrimitives.WriteInt32BigEndian(buf, data.Length); s.Write(buf);
        s.Write(td);
        BinaryPrimitives.WriteUInt32BigEndian(buf, crc); s.Write(buf);
    }

    [Theory]
    [InlineData("i2i_lcm_s05", "gradient_disc_64x96.png", 64, 96)]
    [InlineData("i2i_lcm_s08_n2", "gradient_disc_80x64.png", 80, 64)]
    [InlineData("i2i_dpm_s06", "gradient_disc_64x96.png", 64, 96)]
    public void FixturePngsDecodeToTheReferenceInputImage(string kase, string png, int height, int width)
    {
        using var r = new Reference($"expected/img2img/{kase}");
        Assert.Equal($"inputs/{png}", r.Json.GetProperty("input_image").GetProperty("png").GetString());
        var (w, h, rgb) = PngReader.DecodeRgb8(Fixtures.Path("expected", "img2img", "inputs", png));
        Assert.Equal((width, height), (w, h));
        using var expected = r["input_image"];                     // (H, W, 3) = PNG / 255 in f32
        using var decoded = torch.tensor(rgb, new long[] { h, w, 3 }).to(ScalarType.Float32);
        using var scaled = (expected * 255).round();
        Assert.Equal(0.0, Compare.MaxAbsDiff(scaled, decoded));
        // And the stored f32 is exactly byte/255.
        using var again = decoded / 255;
        Assert.Equal(0.0, Compare.MaxAbsDiff(expected, again));
        // Our writer round-trips the fixture pixels.
        using var dir = new TempDir();
        PngWriter.Write(dir.Path("copy.png"), rgb, w, h);
        Assert.Equal(rgb, PngReader.DecodeRgb8(dir.Path("copy.png")).Rgb);
    }

    [Fact]
    public void OverwritesAnExistingFileAtomically()
    {
        using var dir = new TempDir();
        string path = dir.Path("o.png");
        PngWriter.Write(path, new byte[3 * 4], 2, 2, [("k", "first")]);
        PngWriter.Write(path, new byte[3 * 9], 3, 3, [("k", "second")]);
        Assert.Equal(3, PngReader.DecodeRgb8(path).Width);
        Assert.Equal("second", PngReader.ReadTextChunks(path).Single().Text);
        Assert.Single(Directory.GetFiles(dir.Root));
    }

    [Fact]
    public void MissingFolderIsAClearIOErrorAndLeavesNothing()
    {
        using var dir = new TempDir();
        string path = dir.Path("no", "such", "out.png");
        var e = Assert.Throws<ImageWriteException>(() => PngWriter.Write(path, new byte[3], 1, 1));
        Assert.IsAssignableFrom<IOException>(e);
        Assert.Contains(path, e.Message);
        Assert.Contains("does not exist", e.Message);
        Assert.Empty(Directory.GetFileSystemEntries(dir.Root));
    }

    [Fact]
    public void TargetThatIsAFolderFailsAfterTheTempFileAndCleansUp()
    {
        using var dir = new TempDir();
        string path = dir.Path("taken.png");
        Directory.CreateDirectory(path);
        var e = Assert.Throws<ImageWriteException>(() => PngWriter.Write(path, new byte[3], 1, 1));
        Assert.Contains(path, e.Message);
        Assert.Contains("folder", e.Message);
        Assert.Empty(Directory.GetFiles(dir.Root));  // the temp file written beside it is gone
        Assert.Empty(Directory.GetFileSystemEntries(path));
    }

    [Fact]
    public void PathUnderAFileIsAClearError()
    {
        using var dir = new TempDir();
        string file = dir.Write("plain.txt", [1]);
        string path = Path.Combine(file, "out.png");
        var e = Assert.Throws<ImageWriteException>(() => PngWriter.Write(path, new byte[3], 1, 1));
        Assert.Contains(path, e.Message);
        Assert.Equal(new[] { file }, Directory.GetFiles(dir.Root));
    }

    [Theory]
    [InlineData("", "x")]
    [InlineData(" lead", "x")]
    [InlineData("two  spaces", "x")]
    [InlineData("キー", "x")]
    public void InvalidTextChunksAreRefusedBeforeWriting(string keyword, string text)
    {
        using var dir = new TempDir();
        var e = Assert.Throws<ArgumentException>(() => PngWriter.Write(dir.Path("t.png"), new byte[3], 1, 1, [(keyword, text)]));
        Assert.Equal("text", e.ParamName);
        Assert.Empty(Directory.GetFiles(dir.Root));
    }

    [Fact]
    public void WrongPixelCountIsRefused()
    {
        using var dir = new TempDir();
        Assert.Equal("rgb", Assert.Throws<ArgumentException>(() => PngWriter.Write(dir.Path("t.png"), new byte[5], 1, 2)).ParamName);
        Assert.Throws<ArgumentOutOfRangeException>(() => PngWriter.Write(dir.Path("t.png"), [], 0, 1));
        Assert.Empty(Directory.GetFiles(dir.Root));
    }

    [Fact]
    public void CorruptOrTruncatedPngIsAClearError()
    {
        using var dir = new TempDir();
        string path = dir.Path("c.png");
        PngWriter.Write(path, RandomRgb(8, 8, 4), 8, 8, [("prompt", "x")]);
        var good = File.ReadAllBytes(path);

        var flipped = (byte[])good.Clone();
        flipped[40] ^= 0xFF;
        string p1 = dir.Write("flipped.png", flipped);
        var e1 = Assert.Throws<InvalidDataException>(() => PngReader.DecodeRgb8(p1));
        Assert.Contains(p1, e1.Message);
        Assert.Contains("CRC", e1.Message);

        string p2 = dir.Write("truncated.png", good[..(good.Length - 20)]);
        Assert.Contains(p2, Assert.Throws<InvalidDataException>(() => PngReader.ReadTextChunks(p2)).Message);

        var huge = (byte[])good.Clone();
        BinaryPrimitives.WriteUInt32BigEndian(huge.AsSpan(8), 0x7FFFFFF0); // IHDR claims 2 GB
        string p3 = dir.Write("huge.png", huge);
        Assert.Contains("past the end", Assert.Throws<InvalidDataException>(() => PngReader.DecodeRgb8(p3)).Message);

        string p4 = dir.Write("notpng.png", Encoding.ASCII.GetBytes("GIF89a......"));
        Assert.Contains("signature", Assert.Throws<InvalidDataException>(() => PngReader.ReadTextChunks(p4)).Message);
    }
}
