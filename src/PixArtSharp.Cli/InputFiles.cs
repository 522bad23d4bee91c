using System.Buffers.Binary;
using System.Text;
using System.Text.RegularExpressions;
using PixArtSharp.Imaging;
using PixArtSharp.Pipeline;

namespace PixArtSharp.Cli;

/// <summary>
/// The files and names a run takes from outside (issue 15): regular files only, with their sizes checked before a
/// byte is read (so /dev/zero, a FIFO or a huge file is a one-line exit 2, not a hang or an out-of-memory); names
/// from a PNG someone sent checked before they reach a path; and PNG text that can always be written.
/// </summary>
public static partial class InputFiles
{
    /// <summary>--prompts-file: at most 1 MiB (about 10,000 long prompts).</summary>
    public const long MaxPromptsFileBytes = 1L << 20;
    /// <summary>--from-png: the whole file at most 64 MiB (PngReader reads it whole) …</summary>
    public const long MaxFromPngBytes = 64L << 20;
    /// <summary>… and each text chunk in it at most 1 MiB (pixart's own metadata is a few KB).</summary>
    public const int MaxPngTextChunkBytes = 1 << 20;

    /// <summary>
    /// Checks that <paramref name="path"/> is a regular, non-empty file of at most <paramref name="maxBytes"/> bytes,
    /// without opening it (opening a FIFO blocks). Devices, FIFOs, sockets and /proc files report a size of 0, as an
    /// empty file does; none of them is something to read here.
    /// </summary>
    public static long CheckRegularFile(string option, string path, long maxBytes)
    {
        FileInfo info;
        try { info = new FileInfo(path); }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw new UsageException($"{option}: '{path}' is not a valid file name.");
        }
        if (Directory.Exists(path)) throw new UsageException($"{option}: {path} is a folder; give a file.");
        if (!info.Exists) throw new UsageException($"{option}: file not found: {path}.");
        long length;
        try { length = info.Length; }
        catch (IOException e) { throw new UsageException($"{option}: cannot read {path}: {e.Message}"); }
        if (length == 0)
            throw new UsageException($"{option}: {path} is empty or not a regular file (a device, FIFO or socket); give a regular file.");
        if (length > maxBytes)
            throw new UsageException($"{option}: {path} has {length:N0} bytes; at most {maxBytes:N0} are read (see --help).");
        return length;
    }

    /// <summary>Reads a checked file, never more than <paramref name="maxBytes"/> (a file that grows meanwhile is refused).</summary>
    public static byte[] ReadBounded(string option, string path, long maxBytes)
    {
        CheckRegularFile(option, path, maxBytes);
        try
        {
            using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
            var buffer = new byte[maxBytes + 1];
            int n = fs.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);
            if (n > maxBytes) throw new UsageException($"{option}: {path} has more than {maxBytes:N0} bytes; at most {maxBytes:N0} are read (see --help).");
            return buffer[..n];
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UsageException($"{option}: cannot read {path}: {e.Message}");
        }
    }

    /// <summary>--prompts-file: one prompt per line (blank lines skipped), UTF-8, at most <see cref="MaxPromptsFileBytes"/>.</summary>
    public static List<string> ReadPrompts(string path)
    {
        byte[] bytes = ReadBounded("--prompts-file", path, MaxPromptsFileBytes);
        using var reader = new StreamReader(new MemoryStream(bytes), Encoding.UTF8, detectEncodingFromByteOrderMarks: true);
        var prompts = new List<string>();
        for (string? line; (line = reader.ReadLine()) != null;)
            if (!string.IsNullOrWhiteSpace(line)) prompts.Add(line);
        return prompts;
    }

    /// <summary>
    /// --from-png: a regular file of at most <see cref="MaxFromPngBytes"/> whose text chunks are each at most
    /// <see cref="MaxPngTextChunkBytes"/> (walked by their headers, before PngReader reads any of them).
    /// </summary>
    public static void CheckFromPng(string path)
    {
        byte[] file = ReadBounded("--from-png", path, MaxFromPngBytes);
        ReadOnlySpan<byte> signature = [137, 80, 78, 71, 13, 10, 26, 10];
        if (file.Length < 8 || !file.AsSpan(0, 8).SequenceEqual(signature))
            throw new UsageException($"--from-png: {path} is not a PNG file.");
        for (long at = 8; at + 8 <= file.Length;)
        {
            uint length = BinaryPrimitives.ReadUInt32BigEndian(file.AsSpan((int)at));
            string type = Encoding.ASCII.GetString(file, (int)at + 4, 4);
            if (type is "tEXt" or "zTXt" or "iTXt" && length > MaxPngTextChunkBytes)
                throw new UsageException($"--from-png: {path} has a {type} chunk of {length:N0} bytes; text chunks of at most {MaxPngTextChunkBytes:N0} bytes are read.");
            if (type == "IEND") break;
            at += 12L + length;
        }
    }

    // ───────────────────────────── names from a PNG ─────────────────────────────

    [GeneratedRegex(@"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")]
    private static partial Regex HubIdPattern();

    /// <summary>org/name as the Hub spells repository ids (no "..", no leading dot, nothing that is a local path).</summary>
    public static bool IsHubId(string s) =>
        HubIdPattern().IsMatch(s) && !s.Contains("..", StringComparison.Ordinal) && !s.EndsWith(".git", StringComparison.Ordinal);

    [GeneratedRegex(@"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")]
    private static partial Regex NamePattern();

    /// <summary>A weights variant is a name (fp16, ema, …): letters, digits, '-', '_', '.', never "..".</summary>
    public static bool IsVariantName(string s) => NamePattern().IsMatch(s) && !s.Contains("..", StringComparison.Ordinal);

    [GeneratedRegex(@"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,127}$")]
    private static partial Regex RevisionPattern();

    /// <summary>A Hub revision: a branch, tag or commit (branches may hold '/'), never "..".</summary>
    public static bool IsRevision(string s) => RevisionPattern().IsMatch(s) && !s.Contains("..", StringComparison.Ordinal) && !s.Contains("//", StringComparison.Ordinal);
}
