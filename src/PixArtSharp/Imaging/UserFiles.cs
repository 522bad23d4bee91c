using System.Text;
using PixArtSharp.Loading;

namespace PixArtSharp.Imaging;

/// <summary>
/// A file a user named (an --image, a --prompts-file, a --from-png) cannot be used: missing, not a regular file
/// (a folder, FIFO, device such as /dev/zero), unreadable, or over its size limit. The message names the file and
/// the limit; front ends treat it as bad input (CLI exit code 2, HTTP 400).
/// </summary>
public class UserFileException(string message, Exception? inner = null) : IOException(message, inner);

/// <summary>
/// Opens files that users name, safely: only regular files (links followed; a FIFO would block the open, a device
/// such as <c>/dev/zero</c> would never end), with the size checked against a limit <b>before</b> reading, and a
/// read that stops at the limit even if the file grows meanwhile. Every failure is a <see cref="UserFileException"/>.
/// </summary>
internal static class UserFiles
{
    /// <summary>The limit for a --prompts-file: 4 MiB (tens of thousands of prompts).</summary>
    public const long MaxPromptsFileBytes = 4L << 20;

    /// <summary>Checks that <paramref name="path"/> is an existing regular file of at most <paramref name="maxBytes"/> bytes; returns its length.</summary>
    /// <param name="what">How messages name it ("--prompts-file", "the image").</param>
    public static long Check(string path, long maxBytes, string what)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var kind = FileKinds.Of(path);
        if (kind == FileKind.Missing)
            throw new UserFileException($"{what}: {path} does not exist.");
        if (kind != FileKind.Regular)
            throw new UserFileException($"{what}: {path} is {FileKinds.Describe(kind)}, not a regular file. Give a regular file.");
        long length = FileStamp.Of(path)?.Length ?? throw new UserFileException($"{what}: {path} cannot be read.");
        if (length > maxBytes)
            throw new UserFileException($"{what}: {path} has {length:N0} bytes; the limit is {maxBytes:N0} bytes.");
        return length;
    }

    /// <summary>Opens a checked regular file (see <see cref="Check"/>) for reading.</summary>
    public static FileStream OpenRead(string path, long maxBytes, string what)
    {
        Check(path, maxBytes, what);
        try
        {
            return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new UserFileException($"{what}: {path} cannot be read: permission denied.", e);
        }
        catch (IOException e) when (e is not UserFileException)
        {
            throw new UserFileException($"{what}: {path} cannot be read ({e.Message}).", e);
        }
    }

    /// <summary>The whole file, at most <paramref name="maxBytes"/> bytes (checked before reading, and enforced while reading).</summary>
    public static byte[] ReadAllBytes(string path, long maxBytes, string what)
    {
        using var fs = OpenRead(path, maxBytes, what);
        using var ms = new MemoryStream();
        var buffer = new byte[81920];
        try
        {
            for (int n; (n = fs.Read(buffer)) > 0;)
            {
                if (ms.Length + n > maxBytes)
                    throw new UserFileException($"{what}: {path} grew past the limit of {maxBytes:N0} bytes while it was read.");
                ms.Write(buffer, 0, n);
            }
        }
        catch (IOException e) when (e is not UserFileException)
        {
            throw new UserFileException($"{what}: {path} cannot be read ({e.Message}).", e);
        }
        return ms.ToArray();
    }

    /// <summary>The file as UTF-8 text (a byte-order mark is skipped; invalid bytes are an error naming the file).</summary>
    public static string ReadAllText(string path, long maxBytes, string what)
    {
        var bytes = ReadAllBytes(path, maxBytes, what).AsSpan();
        if (bytes.StartsWith(Encoding.UTF8.Preamble)) bytes = bytes[3..];
        try
        {
            return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes);
        }
        catch (DecoderFallbackException e)
        {
            throw new UserFileException($"{what}: {path} is not UTF-8 text (invalid bytes at offset {e.Index}). Save it as UTF-8.", e);
        }
    }
}
