using System.CommandLine;
using PixArtSharp.Hub;

namespace PixArtSharp.Cli.Download;

/// <summary><c>pixart download MODEL</c>: fetches a pipeline into the Hugging Face cache, so a later run needs no network.</summary>
public static class DownloadCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model")
        {
            Description = "A Hugging Face model id (org/name), e.g. PixArt-alpha/PixArt-LCM-XL-2-1024-MS.",
        };
        var revision = new Option<string?>("--revision") { Description = "A branch, tag or commit (default: main)." };
        var variant = new Option<string?>("--variant") { Description = "A weights variant such as fp16; components without it get their default weights." };
        var quiet = new Option<bool>("--quiet", "-q") { Description = "Print only the snapshot folder." };

        var command = new Command("download",
            "Download a model into the Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub), " +
            "the layout Python's huggingface_hub uses, so both reuse each other's downloads. Only the files PixArtSharp needs " +
            "are fetched; interrupted files resume. Honours HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE. Prints the local folder.\n\n" +
            "Example:\n  pixart download PixArt-alpha/PixArt-LCM-XL-2-1024-MS")
        {
            model, revision, variant, quiet,
        };
        command.SetAction(CliApp.Guard(async (parseResult, output, ct) =>
        {
            string id = parseResult.GetValue(model)!;
            if (Directory.Exists(id))
                throw new UsageException($"'{id}' is a local folder, which needs no download; give a Hugging Face id such as PixArt-alpha/PixArt-LCM-XL-2-1024-MS.");
            if (!HubClient.IsValidRepoId(id) || id.Count(c => c == '/') != 1)
                throw new UsageException($"'{id}' is not a Hugging Face model id (org/name), e.g. PixArt-alpha/PixArt-LCM-XL-2-1024-MS.");
            var settings = HubSettings.FromEnvironment();
            string folder = await DownloadView.RunAsync(output, parseResult.GetValue(quiet), progress =>
                ModelLocator.ResolveAsync(id, parseResult.GetValue(revision), parseResult.GetValue(variant), progress, settings, ct)).ConfigureAwait(false);
            output.Out.WriteLine(folder);
            return ExitCodes.Ok;
        }));
        return command;
    }
}
