using System.Globalization;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace PixArtSharp.Cli.Generate;

/// <summary>The stages of one <c>pixart generate</c> run, in order.</summary>
public enum Stage { Load, Encode, Denoise, Decode, Save }

/// <summary>
/// Shows the stages of a run (load, encode, denoise step k/N with seconds per step and ETA, decode, save):
/// a Spectre.Console live display on a terminal, plain lines when stderr is redirected, nothing with --quiet.
/// </summary>
public abstract class GenerateProgress
{
    public static GenerateProgress Create(CliOutput output, bool quiet)
    {
        if (quiet) return new Silent();
        return output.LiveConsole() is { } console ? new Live(console) : new Plain(output.Err);
    }

    /// <summary>Runs the whole generation inside the display (a live display owns the terminal meanwhile).</summary>
    public virtual T Run<T>(Func<T> body) => body();
    public abstract void Begin(Stage stage, string detail);
    /// <param name="done">Steps done over the whole run (all batches).</param>
    public abstract void Step(int done, int total, double secondsPerStep, double etaSeconds, string? detail);
    public abstract void End(Stage stage, TimeSpan elapsed, string? detail = null);

    internal static string Name(Stage s) => s.ToString().ToLowerInvariant();

    internal static string Seconds(double s) =>
        s < 60 ? string.Create(CultureInfo.InvariantCulture, $"{s:0.00} s") : $"{(int)(s / 60)} min {(int)(s % 60)} s";

    internal static string StepText(int done, int total, double secondsPerStep, double etaSeconds, string? detail) =>
        string.Create(CultureInfo.InvariantCulture, $"step {done}/{total}, {secondsPerStep:0.000} s/step, ETA {Seconds(etaSeconds)}")
        + (detail is null ? "" : $" ({detail})");

    private sealed class Silent : GenerateProgress
    {
        public override void Begin(Stage stage, string detail) { }
        public override void Step(int done, int total, double secondsPerStep, double etaSeconds, string? detail) { }
        public override void End(Stage stage, TimeSpan elapsed, string? detail = null) { }
    }

    /// <summary>One line per event, for logs and pipes.</summary>
    private sealed class Plain(TextWriter err) : GenerateProgress
    {
        public override void Begin(Stage stage, string detail) => err.WriteLine($"{Name(stage),-8} {detail}");

        public override void Step(int done, int total, double secondsPerStep, double etaSeconds, string? detail) =>
            err.WriteLine($"{Name(Stage.Denoise),-8} {StepText(done, total, secondsPerStep, etaSeconds, detail)}");

        public override void End(Stage stage, TimeSpan elapsed, string? detail = null) =>
            err.WriteLine($"{Name(stage),-8} {detail ?? "done"} in {Seconds(elapsed.TotalSeconds)}");
    }

    /// <summary>A Spectre progress display with one row per stage; a background thread keeps the clock ticking.</summary>
    private sealed class Live(IAnsiConsole console) : GenerateProgress
    {
        private readonly Dictionary<Stage, ProgressTask> _tasks = [];
        private readonly Dictionary<int, string> _details = [];

        public override T Run<T>(Func<T> body) =>
            console.Progress()
                .AutoClear(false)
                .HideCompleted(false)
                .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn { Width = 20 },
                         new ElapsedTimeColumn(), new DetailColumn(this))
                .Start(ctx =>
                {
                    foreach (var s in Enum.GetValues<Stage>())
                        _tasks[s] = ctx.AddTask(Name(s), autoStart: false, maxValue: 1);
                    return body();
                });

        private void SetDetail(ProgressTask t, string text) { lock (_details) _details[t.Id] = text; }

        private string Detail(ProgressTask t) { lock (_details) return _details.GetValueOrDefault(t.Id, ""); }

        public override void Begin(Stage stage, string detail)
        {
            var t = _tasks[stage];
            SetDetail(t, detail);
            t.IsIndeterminate = stage != Stage.Denoise;
            if (!t.IsStarted) t.StartTask();
        }

        public override void Step(int done, int total, double secondsPerStep, double etaSeconds, string? detail)
        {
            var t = _tasks[Stage.Denoise];
            t.IsIndeterminate = false;
            t.MaxValue = total;
            t.Value = done;
            SetDetail(t, string.Create(CultureInfo.InvariantCulture, $"{done}/{total}  {secondsPerStep:0.00} s/step  ETA {Seconds(etaSeconds)}")
                         + (detail is null ? "" : $"  {detail}"));
        }

        public override void End(Stage stage, TimeSpan elapsed, string? detail = null)
        {
            var t = _tasks[stage];
            if (detail != null) SetDetail(t, detail);
            t.IsIndeterminate = false;
            t.Value = t.MaxValue;
            t.StopTask();
        }

        private sealed class DetailColumn(Live owner) : ProgressColumn
        {
            public override IRenderable Render(RenderOptions options, ProgressTask task, TimeSpan deltaTime) =>
                new Spectre.Console.Text(owner.Detail(task));
        }
    }
}
