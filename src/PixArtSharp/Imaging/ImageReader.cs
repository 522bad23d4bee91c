using NetVips;
using VImage = NetVips.Image;

namespace PixArtSharp.Imaging;

/// <summary>
/// Reads images that users give us — untrusted files — into 8-bit sRGB RGB, through libvips (NetVips).
/// <list type="bullet">
/// <item>Formats: PNG, JPEG and WebP only. Every other libvips loader is blocked process-wide (so a file cannot pick
/// a risky loader by its content: SVG, PDF, TIFF, FITS, Matlab, …) and the format is sniffed from the bytes, never
/// from the name. Data is always loaded from memory, never from a user-given path (libvips parses "[options]" in
/// file names).</item>
/// <item>Pixel limit: the size in the header is checked <b>before</b> any pixel is decoded (a 74-byte PNG can claim
/// 20000×20000 = 1.2 GB of pixels). The default limit is <see cref="DefaultMaxPixels"/>.</item>
/// <item>Corrupt or truncated data is an error (<c>fail_on=error</c>; libvips' default would silently decode a
/// truncated PNG with a black part).</item>
/// <item>EXIF orientation is applied (autorot), so the pixels are the way up a viewer shows them.</item>
/// <item>Colour: an embedded ICC profile is converted to sRGB; grey, 16-bit and CMYK images are converted to 8-bit
/// sRGB.</item>
/// <item>Alpha: transparent pixels are composited onto <b>white</b> (libvips flatten), as an image viewer on a
/// white page shows them. The alpha channel is then gone: the model sees three channels.</item>
/// <item>Concurrency and memory: at most <see cref="MaxConcurrentDecodes"/> images (default 2) are decoded at once,
/// process-wide; other callers wait for a slot (a server can answer 429 instead, see <see cref="DecodesInProgress"/>).
/// An image without an EXIF rotation streams from the decoder into its output array, so a 7000×7000 image needs
/// about 170 MB while it decodes (its 147 MB of RGB; eight at once ≈ 1.3 GB); a rotated one is decoded whole first
/// (about 320 MB). libvips' operation cache is off, and the C heap is trimmed after decoding (glibc keeps freed memory
/// in per-thread arenas otherwise), so the memory goes back to the system.</item>
/// <item>Files: only regular files of at most <see cref="MaxFileBytes"/>, checked before reading (<see cref="UserFiles"/>).</item>
/// </list>
/// Every failure is an <see cref="ImageReadException"/> that names the file and says what is wrong.
/// </summary>
public static class ImageReader
{
    /// <summary>50 megapixels: more than any camera photo a user is likely to have, far below a bomb.</summary>
    public const long DefaultMaxPixels = 50_000_000;

    /// <summary>Files larger than this (256 MiB) are refused before they are read into memory.</summary>
    public const long MaxFileBytes = 256L << 20;

    // The loaders vips_foreign_find_load_buffer may name (class names; nicknames in older versions), by format.
    private static readonly Dictionary<string, string> Loaders = new()
    {
        ["VipsForeignLoadPngBuffer"] = "PNG",
        ["VipsForeignLoadJpegBuffer"] = "JPEG",
        ["VipsForeignLoadWebpBuffer"] = "WebP",
        ["pngload_buffer"] = "PNG",
        ["jpegload_buffer"] = "JPEG",
        ["webpload_buffer"] = "WebP",
    };

    private static readonly object InitLock = new();
    private static readonly object SlotsLock = new();
    private static SemaphoreSlim _slots = new(2, 2);
    private static int _maxConcurrent = 2;
    private static int _inProgress;

    /// <summary>
    /// How many images may be decoded at once in this process (default 2). Callers beyond it wait for a slot.
    /// Changing it affects decodes that start afterwards.
    /// </summary>
    public static int MaxConcurrentDecodes
    {
        get => _maxConcurrent;
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1, nameof(MaxConcurrentDecodes));
            ArgumentOutOfRangeException.ThrowIfGreaterThan(value, 256, nameof(MaxConcurrentDecodes));
            lock (SlotsLock)
            {
                _maxConcurrent = value;
                _slots = new SemaphoreSlim(value, value);
            }
        }
    }

    /// <summary>Decodes running or waiting for a slot now (a server may refuse new uploads while this is at its limit).</summary>
    internal static int DecodesInProgress => Volatile.Read(ref _inProgress);
    private static bool _initialized;
    // Kept in a field: libvips holds a native pointer to this delegate.
    private static Log.LogDelegate? _logHandler;

    /// <summary>Reads and decodes the file at <paramref name="path"/> (see the class summary for what is accepted).</summary>
    public static RgbImage Read(string path, long maxPixels = DefaultMaxPixels, CancellationToken ct = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        byte[] data;
        try
        {
            // Regular files only (a FIFO blocks, /dev/zero never ends), the size checked before reading.
            data = UserFiles.ReadAllBytes(path, MaxFileBytes, "image");
        }
        catch (UserFileException e)
        {
            throw new ImageReadException(e.Message, e);
        }
        return Decode(data, path, maxPixels, ct);
    }

    /// <summary>Decodes an image held in memory. <paramref name="name"/> only labels messages.</summary>
    public static RgbImage Decode(byte[] data, string name = "image", long maxPixels = DefaultMaxPixels, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (maxPixels < 1) throw new ArgumentException($"maxPixels must be positive, got {maxPixels}.", nameof(maxPixels));
        if (data.Length == 0) throw new ImageReadException($"{name}: the file is empty.");
        if (data.LongLength > MaxFileBytes)
            throw new ImageReadException($"{name}: {data.LongLength:N0} bytes; images larger than {MaxFileBytes:N0} bytes are refused.");
        EnsureInitialized();

        try
        {
            // 1. Sniff the format from the bytes; only the three unblocked loaders can match.
            string? loader = VImage.FindLoadBuffer(data);
            if (loader is null || !Loaders.TryGetValue(loader, out var format))
                throw new ImageReadException($"{name}: not a PNG, JPEG or WebP image" +
                    (loader is null ? " (the data matches no image format)." : $" (libvips recognises it with '{loader}', which is not accepted)."));

            // 2. Open: this reads only the header, so the size can be checked before any pixel is decoded.
            //    Corrupt data fails the read. JPEG also fails on libjpeg's warnings (sharp's default): a JPEG whose
            //    header claims more rows than its data holds only draws a warning ("premature end of data
            //    segment") and would otherwise decode with a grey band. PNG stays at errors, so that harmless
            //    libpng warnings about ancillary chunks (e.g. a known-incorrect sRGB profile) do not refuse a file.
            var failOn = format == "JPEG" ? Enums.FailOn.Warning : Enums.FailOn.Error;
            using var header = VImage.NewFromBuffer(data, "", Enums.Access.Random, failOn);
            long pixels = (long)header.Width * header.Height;
            if (pixels > maxPixels)
                throw new ImageReadException(
                    $"{name}: the {format} header says {header.Width}×{header.Height} = {pixels:N0} pixels; the limit is {maxPixels:N0}. " +
                    "Scale the image down first.");
            if (pixels * 3 > Array.MaxLength)   // a caller's own maxPixels can allow more than one RGB array holds
                throw new ImageReadException(
                    $"{name}: {header.Width}×{header.Height} = {pixels:N0} pixels is more RGB data than one array holds ({Array.MaxLength:N0} bytes). " +
                    "Scale the image down first.");

            // 3. Decode and convert, in one of the process's decode slots. Each step is lazy; Write runs the
            //    whole chain (and the decoder).
            var image = header;
            var owned = new List<VImage>();
            SemaphoreSlim slots;
            lock (SlotsLock) slots = _slots;
            Interlocked.Increment(ref _inProgress);
            try
            {
                slots.Wait(ct);
            }
            catch
            {
                Interlocked.Decrement(ref _inProgress);
                throw;
            }
            // A large image's pixels end up in a managed array (the RgbImage). The arrays of earlier decodes are
            // usually garbage by now, but the GC collects the large-object heap rarely, and a plain collection keeps
            // the freed pages committed: collect and decommit before decoding, so the slots bound the memory rather
            // than the GC's budget (a non-compacting collection here left 8 decodes of 7000² through 2 slots
            // anywhere between +0.78 and +1.21 GB of RSS; this, with the streaming below, +0.36–0.65 GB).
            bool large = pixels * 3 >= LargeDecodeBytes;
            if (large) ReturnManagedMemory();
            try
            {
                // EXIF orientation. Without a rotation the pixels stream from the decoder through the chain in
                // strips (sequential access); a rotation needs the decoded image whole (random access).
                int orientation = header.Contains("orientation") ? (int)header.Get("orientation") : 1;
                if (orientation is > 1 and <= 8) image = Keep(owned, image.Autorot());
                else image = Keep(owned, VImage.NewFromBuffer(data, "", Enums.Access.Sequential, failOn));
                if (image.HasAlpha())
                {
                    // Flatten onto white at the image's own depth (alpha max 65535 for 16-bit images).
                    double max = image.Format == Enums.BandFormat.Ushort ? 65535 : image.Format is Enums.BandFormat.Float or Enums.BandFormat.Double ? 1.0 : 255;
                    image = Keep(owned, image.Flatten([max], max));
                }
                image = Keep(owned, ToSrgb(image));
                if (image.Format != Enums.BandFormat.Uchar) image = Keep(owned, image.Cast(Enums.BandFormat.Uchar));
                if (image.Bands > 3) image = Keep(owned, image.ExtractBand(0, 3));
                if (image.Bands != 3)
                    throw new ImageReadException($"{name}: the {format} image has {image.Bands} channels after conversion to sRGB; expected 3.");

                // libvips writes the pixels straight into the managed array (pinned while the image wraps it), so
                // a decode holds one copy of its output, not libvips' buffer and a managed copy of it.
                byte[] rgb = GC.AllocateUninitializedArray<byte>(image.Width * image.Height * 3);
                using (var target = VImage.NewFromMemory(rgb, image.Width, image.Height, 3, Enums.BandFormat.Uchar))
                    image.Write(target);
                return new RgbImage(image.Width, image.Height, rgb);
            }
            finally
            {
                foreach (var o in owned) o.Dispose();
                slots.Release();
                // The last decode out hands the freed C heap (and, after a large image, the freed managed heap) back
                // to the system.
                if (Interlocked.Decrement(ref _inProgress) == 0)
                {
                    TrimNativeHeap();
                    if (large) ReturnManagedMemory();
                }
            }
        }
        catch (VipsException e)
        {
            // libvips' error buffer is process-wide: keep the distinct lines that describe this failure.
            string detail = string.Join("; ", e.Message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(l => System.Text.RegularExpressions.Regex.Replace(l, @"\s*\(threadpool completed with \d+ workers\)", ""))
                .Where(l => !l.Contains("is not in a known format") && l != "unable to write to memory")
                .Distinct());
            throw new ImageReadException($"{name}: the image is corrupt or truncated: {detail}", e);
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "malloc_trim")]
    private static extern int MallocTrim(nuint pad);

    private static bool _noTrim;

    /// <summary>Decodes whose RGB output reaches this (32 MiB, about 11 megapixels) collect garbage around them.</summary>
    private const long LargeDecodeBytes = 32L << 20;

    /// <summary>A full compacting collection that also decommits the freed regions (GCCollectionMode.Aggressive).</summary>
    private static void ReturnManagedMemory() =>
        GC.Collect(2, GCCollectionMode.Aggressive, blocking: true, compacting: true);

    /// <summary>glibc's malloc_trim(0): returns free memory at the top of the heap and in every arena to the system.</summary>
    private static void TrimNativeHeap()
    {
        if (_noTrim || !OperatingSystem.IsLinux()) return;
        try { _ = MallocTrim(0); }   // 1 when memory was released, 0 when none could be: either is fine
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException) { _noTrim = true; }   // musl: no malloc_trim
    }

    private static VImage Keep(List<VImage> owned, VImage image)
    {
        owned.Add(image);
        return image;
    }

    /// <summary>Embedded ICC profile → sRGB; otherwise libvips' colourspace conversion (grey, 16-bit, CMYK) to sRGB.</summary>
    private static VImage ToSrgb(VImage image)
    {
        if (image.Contains("icc-profile-data"))
        {
            try
            {
                var converted = image.IccTransform("srgb", embedded: true, intent: Enums.Intent.Relative, depth: 8);
                // Run the transform on one pixel now: a broken profile fails here, not in the final write.
                using (var probe = converted.Crop(0, 0, 1, 1)) probe.WriteToMemory<byte>();
                return converted;
            }
            catch (VipsException)
            {
                // A profile lcms cannot use: ignore it, as most viewers do, and convert by the interpretation.
            }
        }
        return image.Interpretation == Enums.Interpretation.Srgb ? image.Copy() : image.Colourspace(Enums.Interpretation.Srgb);
    }

    private static void EnsureInitialized()
    {
        if (_initialized) return;
        lock (InitLock)
        {
            if (_initialized) return;
            if (!ModuleInitializer.VipsInitialized)
                throw new InvalidOperationException("libvips could not be loaded (the NetVips.Native package provides it): " +
                    ModuleInitializer.Exception?.Message);
            // Only the three loaders we accept: block every loader, and the "untrusted" operations libvips marks.
            global::NetVips.NetVips.BlockUntrusted = true;
            Operation.Block("VipsForeignLoad", true);
            foreach (var cls in new[] { "VipsForeignLoadPng", "VipsForeignLoadJpeg", "VipsForeignLoadWebp" })
                Operation.Block(cls, false);
            // Decoded user images should not linger in libvips' operation cache.
            Cache.Max = 0;
            Cache.MaxMem = 0;
            Cache.MaxFiles = 0;
            // libvips logs decoder warnings (e.g. "premature end of JPEG file") from its worker threads to stderr;
            // silence them: a failure already carries its messages in the exception (libvips' error buffer).
            _logHandler = (domain, level, message) => { };
            Log.SetLogHandler("VIPS", Enums.LogLevelFlags.Warning | Enums.LogLevelFlags.Message | Enums.LogLevelFlags.Info | Enums.LogLevelFlags.Critical, _logHandler);
            _initialized = true;
        }
    }
}
