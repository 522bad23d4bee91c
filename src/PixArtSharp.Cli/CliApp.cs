using System.CommandLine;
using System.CommandLine.Invocation;
using System.Runtime.InteropServices;
using PixArtSharp.Hub;
using PixArtSharp.Imaging;
using PixArtSharp.Loading;
using PixArtSharp.Pipeline;
using Spectre.Console;

namespace PixArtSharp.Cli;

/// <summary>The process exit codes of every <c>pixart</c> command (README "Exit codes").</summary>
public static class ExitCodes
{
    public const int Ok = 0;
    /// <summary>Anything not listed below (libtorch cannot load, a disk error while saving...).</summary>
    public const int Failure = 1;
    public const int BadArguments = 2;
    public const int ModelNotFound = 3;
    public const int BadWeights = 4;
    public const int OutOfMemory = 5;
    /// <summary>128 + SIGINT, as shells report a Ctrl-C.</summary>
    public const int Interrupted = 130;
}

/// <summary>A command-line mistake found by a command (not by the parser): one line, exit code 2.</summary>
public sealed class UsageException(string message) : Exception(message);

/// <summary>Where a command writes: results to <see cref="Out"/>, progress, warnings and errors to <see cref="Err"/>.</summary>
public sealed record CliOutput(TextWriter Out, TextWriter Err, bool ErrIsTerminal)
{
    /// <summary>The writers of this invocation (tests pass their own; a real run gets the process's).</summary>
    public static CliOutput Of(ParseResult parseResult)
    {
        var config = parseResult.InvocationConfiguration;
        var err = config.Error;
        return new CliOutput(config.Output, err, ReferenceEquals(err, Console.Error) && !Console.IsErrorRedirected);
    }

    /// <summary>A Spectre console over <see cref="Err"/> for live displays, or null when the output is not a terminal.</summary>
    public IAnsiConsole? LiveConsole()
    {
        if (!ErrIsTerminal) return null;
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        return console.Profile.Capabilities is { Interactive: true, Ansi: true } ? console : null;
    }

    public void Warn(string message) => Err.WriteLine($"warning: {message}");
}

/// <summary>
/// What every command shares: the global <c>--verbose</c> option, running an action with the one error → exit code
/// mapping, and parsing (a parse error is exit code 2, not System.CommandLine's 1).
/// </summary>
public static class CliApp
{
    public static readonly Option<bool> Verbose = new("--verbose", "-v")
    {
        Description = "On errors, print the full exception with its stack trace.",
        Recursive = true,
    };

    /// <summary>
    /// Wraps a command body: its exceptions become one "error: …" line on stderr (the stack trace only with
    /// --verbose) and the exit code of <see cref="ExitCodes"/>.
    /// </summary>
    public static Func<ParseResult, CancellationToken, Task<int>> Guard(Func<ParseResult, CliOutput, CancellationToken, Task<int>> body) =>
        async (parseResult, ct) =>
        {
            var output = CliOutput.Of(parseResult);
            try
            {
                return await body(parseResult, output, ct).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                int code = ExitCodeFor(e, ct);
                output.Err.WriteLine(code == ExitCodes.Interrupted ? "Interrupted." : $"error: {Describe(e)}");
                if (parseResult.GetValue(Verbose) && code != ExitCodes.Interrupted) output.Err.WriteLine(e.ToString());
                else if (code == ExitCodes.Failure) output.Err.WriteLine("(run with --verbose for details)");
                return code;
            }
        };

    /// <summary>The exit code for an exception escaping a command.</summary>
    public static int ExitCodeFor(Exception e, CancellationToken ct = default) => e switch
    {
        OperationCanceledException => ExitCodes.Interrupted,
        UsageException or ArgumentException or ImageReadException => ExitCodes.BadArguments,
        ModelNotFoundException or HubDownloadException => ExitCodes.ModelNotFound,
        WeightFileException => ExitCodes.BadWeights,
        // A config asking for what this port does not implement (its message names the file and the key), a
        // corrupt tokenizer or other model file, or a generation that ended in NaN/Inf: the model is broken.
        NotSupportedException or InvalidDataException or EndOfStreamException or NonFiniteOutputException => ExitCodes.BadWeights,
        _ when IsOutOfMemory(e) => ExitCodes.OutOfMemory,
        // A model file that cannot be read at all (a symlink loop, no permission, gone): the model is not there.
        // Writing the images fails as ImageWriteException (exit 1) instead.
        _ when IsUnreadable(e) => ExitCodes.ModelNotFound,
        _ when ct.IsCancellationRequested => ExitCodes.Interrupted,
        _ => ExitCodes.Failure,
    };

    /// <summary>
    /// A file that cannot be opened at all: no permission, gone, or a symlink loop (ELOOP, which .NET reports as a
    /// plain IOException "Too many levels of symbolic links"). Other IOExceptions (a full disk) stay exit 1.
    /// </summary>
    public static bool IsUnreadable(Exception e) =>
        e is UnauthorizedAccessException or FileNotFoundException or DirectoryNotFoundException
        || (e is IOException && e is not ImageWriteException && e.Message.Contains("symbolic link", StringComparison.OrdinalIgnoreCase));

    /// <summary>Managed OOM, or libtorch's allocator failing (an ExternalException "DefaultCPUAllocator: not enough memory").</summary>
    public static bool IsOutOfMemory(Exception e)
    {
        for (var x = e; x != null; x = x.InnerException)
        {
            if (x is OutOfMemoryException or InsufficientMemoryException) return true;
            if (x is ExternalException or InvalidOperationException &&
                (x.Message.Contains("not enough memory", StringComparison.OrdinalIgnoreCase)
                 || x.Message.Contains("out of memory", StringComparison.OrdinalIgnoreCase)
                 || x.Message.Contains("can't allocate memory", StringComparison.OrdinalIgnoreCase)))
                return true;
        }
        return false;
    }

    private static string Describe(Exception e)
    {
        if (IsOutOfMemory(e))
            return $"out of memory ({FirstLine(e.Message)}). Try --dtype bf16 (half the memory), a smaller --width/--height, fewer images per batch (--num-images, --batch-size), or close other programs.";
        // ArgumentException appends " (Parameter 'x')" to its message; our messages name the setting already.
        if (e is ArgumentException { ParamName: { } p } a && a.Message.EndsWith($" (Parameter '{p}')", StringComparison.Ordinal))
            return a.Message[..^$" (Parameter '{p}')".Length];
        if (e is ImageWriteException || e is UsageException || e is ImageReadException) return e.Message;
        if (IsUnreadable(e))
            return $"cannot read a model file: {FirstLine(e.Message)} (check that the file exists, is a regular file or a link that resolves, and is readable).";
        return FirstLine(e.Message);
    }

    private static string FirstLine(string s)
    {
        int nl = s.IndexOf('\n');
        return (nl < 0 ? s : s[..nl]).TrimEnd();
    }

    /// <summary>
    /// Parses and runs <paramref name="args"/>. Parse errors print one line each (and a pointer to --help) and
    /// return 2. Cancelling <paramref name="ct"/> (Ctrl-C in <see cref="Program.Main"/>) stops the running command.
    /// </summary>
    public static int Invoke(RootCommand root, IReadOnlyList<string> args, TextWriter? stdout, TextWriter? stderr, CancellationToken ct)
    {
        var config = new InvocationConfiguration
        {
            Output = stdout ?? Console.Out,
            Error = stderr ?? Console.Error,
            // Ctrl-C is ours (Program.Main): the command finishes its step, cleans up and returns 130.
            ProcessTerminationTimeout = null,
        };
        var parseResult = root.Parse(args);
        if (parseResult.Action is ParseErrorAction)
        {
            foreach (var error in parseResult.Errors)
                config.Error.WriteLine($"error: {ParseErrorText(error.Message)}");
            string command = string.Join(' ', EnumerateCommandPath(parseResult.CommandResult.Command));
            config.Error.WriteLine($"Run '{command} --help' for usage.");
            return ExitCodes.BadArguments;
        }
        return parseResult.InvokeAsync(config, ct).GetAwaiter().GetResult();
    }

    /// <summary>System.CommandLine's messages on one line, with "an integer" for "System.Nullable`1[System.Int32]".</summary>
    private static string ParseErrorText(string message)
    {
        foreach (var (type, words) in new[] { ("Int32", "an integer"), ("Int64", "an integer"), ("Double", "a number"), ("Boolean", "true or false") })
            message = message.Replace($"expected type 'System.Nullable`1[System.{type}]'", words).Replace($"expected type 'System.{type}'", words);
        return string.Join(' ', message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
    }

    private static IEnumerable<string> EnumerateCommandPath(Command command)
    {
        var names = new List<string>();
        for (Symbol? s = command; s is Command c; s = c.Parents.FirstOrDefault())
            names.Insert(0, c is RootCommand ? "pixart" : c.Name);
        return names;
    }
}
