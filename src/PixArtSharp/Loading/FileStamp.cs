using System.Runtime.InteropServices;

namespace PixArtSharp.Loading;

/// <summary>
/// A file's length and modification time, links followed: enough to tell that a weight file was truncated,
/// rewritten or replaced since it was loaded.
/// </summary>
internal readonly record struct FileStamp(long Length, DateTime LastWriteUtc)
{
    /// <summary>The stamp of the file <paramref name="path"/> leads to now; null when it is gone or cannot be reached.</summary>
    public static FileStamp? Of(string path)
    {
        try
        {
            FileSystemInfo info = new FileInfo(path);
            // FileInfo of a symlink describes the link itself; the Hugging Face cache links snapshots to blobs.
            if (info.LinkTarget != null) info = info.ResolveLinkTarget(returnFinalTarget: true) ?? info;
            if (info is not FileInfo { Exists: true } file) return null;
            return new FileStamp(file.Length, file.LastWriteTimeUtc);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    /// <summary>"it was 10 bytes, now 5" — how <paramref name="now"/> differs from <paramref name="then"/>.</summary>
    public static string Describe(FileStamp then, FileStamp? now) =>
        now is null ? "it is gone or cannot be read"
        : now.Value.Length != then.Length ? $"it was {then.Length} bytes, now {now.Value.Length}"
        : $"it was modified at {now.Value.LastWriteUtc:O}, after it was loaded (modified {then.LastWriteUtc:O})";
}

/// <summary>
/// The stamps of a set of files taken at one moment (e.g. every weight file of a model when a server loads it),
/// checked later: a server calls <see cref="CheckUnchanged"/> before each job and answers 503 naming the file
/// when a model file was changed under it.
/// </summary>
internal sealed class FileStamps
{
    private readonly (string Path, FileStamp? Stamp)[] _files;

    private FileStamps((string, FileStamp?)[] files) => _files = files;

    public static FileStamps Capture(IEnumerable<string> paths) =>
        new(paths.Distinct(StringComparer.Ordinal).Select(p => (p, FileStamp.Of(p))).ToArray());

    public IReadOnlyList<string> Files => _files.Select(f => f.Path).ToList();

    /// <summary>The first file whose stamp changed, with how; null when none did.</summary>
    public (string Path, string What)? FindChanged()
    {
        foreach (var (path, then) in _files)
        {
            var now = FileStamp.Of(path);
            if (now == then) continue;
            return (path, then is null ? "it appeared after the model was loaded" : FileStamp.Describe(then.Value, now));
        }
        return null;
    }

    /// <summary>Throws a <see cref="WeightFileException"/> naming the first file that changed since <see cref="Capture"/>.</summary>
    public void CheckUnchanged()
    {
        if (FindChanged() is { } c)
            throw new WeightFileException($"{c.Path} changed since the model was loaded ({c.What}). Restart (or reload the model) once the files are complete.");
    }
}

/// <summary>
/// The type of a file system entry, from statx(2) on Linux (arch-independent layout); elsewhere from .NET
/// (which cannot tell a FIFO or device from a file, so those report <see cref="FileKind.Regular"/>).
/// </summary>
internal enum FileKind { Missing, Regular, Directory, Fifo, CharDevice, BlockDevice, Socket, SymlinkLoop, Other }

internal static partial class FileKinds
{
    private const int AtFdCwd = -100;
    private const uint StatxType = 0x1;
    private const int Enoent = 2, Enotdir = 20, Eloop = 40;

    [StructLayout(LayoutKind.Sequential, Size = 256)]
    private struct Statx
    {
        public uint Mask;
        public uint BlkSize;
        public ulong Attributes;
        public uint NLink;
        public uint Uid;
        public uint Gid;
        public ushort Mode;
    }

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int StatxNative(int dirfd, string path, int flags, uint mask, out Statx buf);

    private static bool _noStatx;

    /// <summary>What <paramref name="path"/> is, links followed (a link loop is <see cref="FileKind.SymlinkLoop"/>).</summary>
    public static FileKind Of(string path)
    {
        if (OperatingSystem.IsLinux() && !_noStatx)
        {
            try
            {
                if (StatxNative(AtFdCwd, path, 0, StatxType, out var st) != 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    return errno switch
                    {
                        Enoent or Enotdir => FileKind.Missing,
                        Eloop => FileKind.SymlinkLoop,
                        _ => ManagedKind(path),
                    };
                }
                return (st.Mode & 0xF000) switch
                {
                    0x8000 => FileKind.Regular,
                    0x4000 => FileKind.Directory,
                    0x1000 => FileKind.Fifo,
                    0x2000 => FileKind.CharDevice,
                    0x6000 => FileKind.BlockDevice,
                    0xC000 => FileKind.Socket,
                    _ => FileKind.Other,
                };
            }
            catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
            {
                _noStatx = true;   // glibc < 2.28 or another libc: fall back to what .NET can tell
            }
        }
        return ManagedKind(path);
    }

    private static FileKind ManagedKind(string path)
    {
        if (Directory.Exists(path)) return FileKind.Directory;
        var info = new FileInfo(path);
        try
        {
            if (info.LinkTarget != null && info.ResolveLinkTarget(returnFinalTarget: true) is { Exists: false }) return FileKind.Missing;
        }
        catch (IOException) { return FileKind.SymlinkLoop; }
        return info.Exists ? FileKind.Regular : FileKind.Missing;
    }

    public static string Describe(FileKind kind) => kind switch
    {
        FileKind.Directory => "a folder",
        FileKind.Fifo => "a FIFO (named pipe)",
        FileKind.CharDevice => "a character device",
        FileKind.BlockDevice => "a block device",
        FileKind.Socket => "a socket",
        FileKind.SymlinkLoop => "a symbolic link that cannot be resolved (a loop, or too many levels of links)",
        FileKind.Missing => "missing",
        _ => "not a regular file",
    };
}
