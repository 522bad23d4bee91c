namespace PixArtSharp.Cli.Generate;

/// <summary>
/// Output file names: one image goes exactly where -o says; several go to <c>&lt;stem&gt;-&lt;i&gt;&lt;ext&gt;</c> with i from 0 in
/// diffusers' order (batches in order; in a batch prompt-major, then image).
/// </summary>
public static class OutputNaming
{
    /// <summary>The file for -o (a file, a folder, or nothing) when no name is given: <paramref name="defaultName"/>.</summary>
    public static string Normalize(string? output, string defaultName)
    {
        if (string.IsNullOrWhiteSpace(output)) return Path.GetFullPath(defaultName);
        if (Directory.Exists(output) || output.EndsWith('/') || output.EndsWith(Path.DirectorySeparatorChar))
            return Path.GetFullPath(Path.Combine(output, defaultName));
        string ext = Path.GetExtension(output);
        if (ext.Length == 0) return Path.GetFullPath(output + ".png");
        if (!ext.Equals(".png", StringComparison.OrdinalIgnoreCase))
            throw new UsageException($"-o/--output: '{output}' does not end in .png; PixArtSharp writes PNG files only.");
        return Path.GetFullPath(output);
    }

    public static IReadOnlyList<string> Paths(string output, int count)
    {
        if (count == 1) return [output];
        string dir = Path.GetDirectoryName(output) ?? ".", stem = Path.GetFileNameWithoutExtension(output), ext = Path.GetExtension(output);
        return Enumerable.Range(0, count).Select(i => Path.Combine(dir, $"{stem}-{i}{ext}")).ToList();
    }

    /// <summary>
    /// Fails before any model work when the images could not be saved: the folder is missing or not writable,
    /// or a name is taken by a folder. Probes with a temporary file that is removed again.
    /// </summary>
    /// <summary>What PngWriter.WriteBytes adds for its temporary file: "." + name + "." + 32 hex digits + ".tmp".</summary>
    public const int TempNameExtraBytes = 1 + 1 + 32 + 4;
    /// <summary>The longest output file name (UTF-8 bytes) whose temporary name still fits in 255 bytes.</summary>
    public const int MaxFileNameBytes = 255 - TempNameExtraBytes;

    public static void CheckWritable(IReadOnlyList<string> paths)
    {
        foreach (var p in paths)
        {
            if (Directory.Exists(p)) throw new UsageException($"Cannot write the image {p}: a folder of that name exists. Give a file name (e.g. -o out.png).");
            // PngWriter writes ".<name>.<32 hex>.tmp" first and renames it: that name must fit the file system too.
            string name = Path.GetFileName(p);
            int bytes = System.Text.Encoding.UTF8.GetByteCount(name);
            if (bytes > MaxFileNameBytes)
                throw new UsageException($"-o/--output: the file name {name[..Math.Min(40, name.Length)]}… has {bytes} bytes; at most {MaxFileNameBytes} fit (the file system's 255 minus the {TempNameExtraBytes} of the temporary name it is written under first). Choose a shorter name.");
        }
        foreach (var dir in paths.Select(p => Path.GetDirectoryName(p)!).Distinct())
        {
            if (!Directory.Exists(dir))
                throw new UsageException($"Cannot write images to {dir}: the folder does not exist. Create it, or choose another -o/--output.");
            string probe = Path.Combine(dir, $".pixart-write-test-{Guid.NewGuid():N}.tmp");
            try
            {
                using (new FileStream(probe, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose)) { }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new UsageException($"Cannot write images to {dir}: {e.Message.TrimEnd('.')}. Choose a writable -o/--output.");
            }
            finally
            {
                try { File.Delete(probe); } catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
            }
        }
    }
}
