using System.Text;

namespace PixArtSharp.Loading;

/// <summary>
/// Opens the files of a model folder (configs, tokenizer, weights) with errors that name the path: a missing
/// file is a <see cref="ModelNotFoundException"/>; a symbolic-link loop, a folder, FIFO or device where a file
/// should be, an unreadable file or one over the size limit is a <see cref="WeightFileException"/> — never .NET's
/// message alone, and never a read that blocks (FIFO) or does not end (<c>/dev/zero</c>).
/// </summary>
internal static class ModelFiles
{
    /// <summary>Config, index and tokenizer files larger than this (64 MiB) are refused: real ones are below 1 MB.</summary>
    public const long MaxConfigBytes = 64L << 20;

    /// <summary>Checks that <paramref name="path"/> is a regular file (links followed) and returns its stamp.</summary>
    /// <param name="what">What the file is, for messages ("weight file", "tokenizer model").</param>
    public static FileStamp CheckReadable(string path, string what)
    {
        var kind = FileKinds.Of(path);
        if (kind == FileKind.Missing)
            throw new ModelNotFoundException(new FileInfo(path).LinkTarget is { } target
                ? $"The {what} {path} is a symbolic link to {target}, which does not exist. The download is incomplete: download the model again."
                : $"The {what} {path} does not exist. Download the model again.");
        if (kind != FileKind.Regular)
            throw new WeightFileException($"The {what} {path} is {FileKinds.Describe(kind)}, not a regular file. Replace it with the real file (download the model again).");
        return FileStamp.Of(path) ?? throw new WeightFileException($"The {what} {path} cannot be read (it vanished while being opened).");
    }

    /// <summary>Opens a model file for reading after <see cref="CheckReadable"/>; permission and I/O errors name the path.</summary>
    public static FileStream OpenRead(string path, string what)
    {
        CheckReadable(path, what);
        try
        {
            return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new WeightFileException($"The {what} {path} cannot be read: permission denied. Make it readable by this user (chmod a+r).", e);
        }
        catch (IOException e) when (e is not (FileNotFoundException or DirectoryNotFoundException))
        {
            throw new WeightFileException($"The {what} {path} cannot be read ({e.Message}).", e);
        }
        catch (IOException e)
        {
            throw new ModelNotFoundException($"The {what} {path} does not exist. Download the model again.", e);
        }
    }

    /// <summary>The whole file, at most <paramref name="maxBytes"/> (checked before reading), errors naming the path.</summary>
    public static byte[] ReadAllBytes(string path, string what, long maxBytes = MaxConfigBytes)
    {
        using var fs = OpenRead(path, what);
        long length = fs.Length;
        if (length > maxBytes)
            throw new WeightFileException($"The {what} {path} has {length:N0} bytes, more than the {maxBytes:N0} such a file may have; it is not a real {what}. Download the model again.");
        var data = new byte[length];
        try
        {
            fs.ReadExactly(data);
        }
        catch (IOException e)
        {
            throw new WeightFileException($"The {what} {path} cannot be read ({e.Message}); it changed while being read.", e);
        }
        return data;
    }

    /// <summary>The file as UTF-8 text (a byte-order mark is skipped), checked as <see cref="ReadAllBytes"/>.</summary>
    public static string ReadAllText(string path, string what, long maxBytes = MaxConfigBytes)
    {
        var bytes = ReadAllBytes(path, what, maxBytes);
        var span = bytes.AsSpan();
        if (span.StartsWith(Encoding.UTF8.Preamble)) span = span[3..];
        return Encoding.UTF8.GetString(span);
    }
}
