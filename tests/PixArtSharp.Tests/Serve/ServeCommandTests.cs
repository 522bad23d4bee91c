using System.CommandLine;
using PixArtSharp.Cli.Serve;
using PixArtSharp.Imaging;

namespace PixArtSharp.Tests.Serve;

public sealed class ServeCommandTests
{
    [Fact]
    public void ParsesEveryOptionWithTheDocumentedDefaults()
    {
        var cmd = ServeCommand.Create();
        Assert.Equal("serve", cmd.Name);
        Assert.Equal(["--model", "--revision", "--variant", "--lora", "--text-encoder", "--transformer", "--vae", "--host", "--port", "--token", "--max-queue", "--max-batch", "--dtype", "--device", "--offload", "--threads", "--warmup", "--preview", "--preview-vae", "--prompt-cache", "--queue"],
            cmd.Options.Select(o => o.Name).Where(n => n.StartsWith("--", StringComparison.Ordinal) && n != "--help"));
        var parse = cmd.Parse([]);
        Assert.Empty(parse.Errors);
        Assert.Equal("127.0.0.1", parse.GetValue<string>("--host"));
        Assert.Equal(7860, parse.GetValue<int>("--port"));
        Assert.Equal(32, parse.GetValue<int>("--max-queue"));
        Assert.Equal(4, parse.GetValue<int>("--max-batch"));
        Assert.Equal("auto", parse.GetValue<string>("--dtype"));
        Assert.Equal(64, parse.GetValue<int>("--prompt-cache"));
        Assert.Null(parse.GetValue<string?>("--preview"));

        Assert.Null(parse.GetValue<string?>("--variant"));
        Assert.Null(parse.GetValue<string?>("--queue")); // no queue: jobs run in this process

        parse = cmd.Parse(["--model", "some/model", "--revision", "v1.0", "--variant", "fp16", "--port", "8080", "--token", "abcdefgh12", "--max-batch", "8", "--dtype", "bf16", "--threads", "3"]);
        Assert.Empty(parse.Errors);
        Assert.Equal("some/model", parse.GetValue<string>("--model"));
        Assert.Equal(("v1.0", "fp16"), (parse.GetValue<string?>("--revision"), parse.GetValue<string?>("--variant")));
        Assert.Equal(3, parse.GetValue<int?>("--threads"));
        Assert.NotEmpty(cmd.Parse(["--dtype", "int8"]).Errors);
        Assert.NotEmpty(cmd.Parse(["--port", "eighty"]).Errors);
        Assert.Equal("auto", cmd.Parse([]).GetValue<string>("--dtype"));
        Assert.Equal("auto", cmd.Parse([]).GetValue<string>("--device"));
        Assert.Equal("auto", cmd.Parse([]).GetValue<string>("--warmup"));
        Assert.NotEmpty(cmd.Parse(["--warmup", "maybe"]).Errors);
    }

    [Fact]
    public void StartUpErrorsUsePixartsExitCodes()
    {
        var missing = PixArtSharp.Tests.Cli.CliRunner.Run("serve", "--model", "/nonexistent/pixart-model");
        Assert.Equal(3, missing.ExitCode);
        Assert.Contains("error: Model folder '/nonexistent/pixart-model' does not exist", missing.Stderr);
        var bad = PixArtSharp.Tests.Cli.CliRunner.Run("serve", "--max-batch", "0");
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("--max-batch must be at least 1", bad.Stderr);
    }

    [Theory]
    [InlineData(-1, 4, 32, null, "--port")]
    [InlineData(7860, 0, 32, null, "--max-batch")]
    [InlineData(7860, 4, 0, null, "--max-queue")]
    [InlineData(7860, 4, 32, "short", "--token")]
    [InlineData(7860, 4, 32, "has a space", "--token")]
    public void RejectsBadOptions(int port, int maxBatch, int maxQueue, string? token, string param)
    {
        var e = Assert.Throws<ArgumentException>(() => new ServeOptions { Port = port, MaxBatch = maxBatch, MaxQueue = maxQueue, Token = token }.Validate());
        Assert.Equal(param, e.ParamName);
    }

    [Fact]
    public void ImagesNameLocalModelsByFolderNameOnly()
    {
        Assert.Equal("PixArt-alpha/PixArt-LCM-XL-2-1024-MS", ImageFiles.ModelLabel("PixArt-alpha/PixArt-LCM-XL-2-1024-MS"));
        var dir = Directory.CreateTempSubdirectory("pixart-label-");
        try
        {
            Assert.Equal(dir.Name, ImageFiles.ModelLabel(dir.FullName + "/"));
            Assert.Equal(dir.Name, ImageFiles.ModelLabel(dir.FullName));
        }
        finally { dir.Delete(); }
    }

    [Theory]
    [InlineData("127.0.0.1", true)]
    [InlineData("localhost", true)]
    [InlineData("::1", true)]
    [InlineData("0.0.0.0", false)]
    [InlineData("192.168.1.5", false)]
    public void KnowsLoopbackAddresses(string host, bool loopback)
    {
        Assert.Equal(loopback, ServerApp.IsLoopback(host));
        Assert.StartsWith("http://", ServerApp.UrlFor(host, 7860));
    }
}
