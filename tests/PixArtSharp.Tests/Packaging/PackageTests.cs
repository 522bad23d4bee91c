using System.Diagnostics;
using PixArtSharp.Tests.Cli;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;

namespace PixArtSharp.Tests.Packaging;

/// <summary>
/// The packages as a user meets them, on this machine as CI runs it: <c>dotnet pack</c> the library and the tool into
/// a local folder (a version of their own, so no stale NuGet cache can answer), then (1) a new console project outside
/// the repository that references only <c>PixArtSharp</c> builds — the buildTransitive targets patch libtorch for
/// Debian 12 — and generates a PNG on the tiny fixture in a few lines with no setup code; (2)
/// <c>dotnet tool install --tool-path</c> from that folder gives a <c>pixart</c> command that answers --help and
/// generates. Both PNGs are the bytes <c>pixart generate</c> writes for the same settings.
/// </summary>
public sealed class PackageTests(ITestOutputHelper output) : IDisposable
{
    private readonly Loading.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static string RepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "PixArtSharp.slnx"))) return d.FullName;
        throw new InvalidOperationException($"PixArtSharp.slnx not found above {AppContext.BaseDirectory}.");
    }

    private string Run(string workingDir, string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { WorkingDirectory = workingDir, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        // A child dotnet must not inherit the test host's MSBuild/SDK settings; telemetry and banners off.
        foreach (var k in new[] { "MSBuildSDKsPath", "MSBuildExtensionsPath", "MSBUILD_EXE_PATH", "DOTNET_HOST_PATH", "VSTEST_HOST_DEBUG" }) psi.Environment.Remove(k);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        psi.Environment["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1";
        psi.Environment["MSBUILDNODEREUSE"] = "0";
        var clock = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(5))) { p.Kill(entireProcessTree: true); throw new TimeoutException($"{file} {string.Join(' ', args)} did not finish in 5 minutes"); }
        string text = stdout.Result + err.Result;
        output.WriteLine($"$ {file} {string.Join(' ', args)}  ({clock.Elapsed.TotalSeconds:F1} s, exit {p.ExitCode})");
        Assert.True(p.ExitCode == 0, $"{file} {string.Join(' ', args)} exited {p.ExitCode}:\n{text}");
        return text;
    }

    [Fact]
    public void ALibraryConsumerAndTheToolWorkFromTheLocalFeed()
    {
        var total = Stopwatch.StartNew();
        string root = RepoRoot(), feed = _tmp.Path("feed"), work = _tmp.Path("consumer"), tools = _tmp.Path("tools");
        string version = $"0.0.0-ci.{DateTime.UtcNow:yyyyMMddHHmmss}.{Environment.ProcessId}";
        string model = Fixtures.Path("tiny-pixart-lcm");
        try
        {
            // 1. Pack what `dotnet test` just built (Release), at a version of our own.
            foreach (var project in new[] { "src/PixArtSharp/PixArtSharp.csproj", "src/PixArtSharp.Cli/PixArtSharp.Cli.csproj" })
                Run(root, "dotnet", "pack", project, "-c", "Release", "--no-build", "-o", feed, $"-p:PackageVersion={version}", "-nr:false");
            Assert.True(File.Exists(Path.Combine(feed, $"PixArtSharp.{version}.nupkg")));
            Assert.True(File.Exists(Path.Combine(feed, $"PixArtSharp.{version}.snupkg")));
            Assert.True(File.Exists(Path.Combine(feed, $"PixArtSharp.Cli.{version}.nupkg")));

            // 2. A throwaway console app outside the repository: its own nuget.config (the local feed, then the public
            //    registry; packages already in the NuGet cache are not fetched again) and empty Directory.*.props so
            //    nothing of ours leaks in.
            Directory.CreateDirectory(work);
            File.WriteAllText(Path.Combine(work, "nuget.config"), $"""
                <?xml version="1.0" encoding="utf-8"?>
                <configuration>
                  <packageSources>
                    <clear />
                    <add key="local" value="{feed}" />
                    <add key="nuget.org" value="https://api.nuget.org/v3/index.json" protocolVersion="3" />
                  </packageSources>
                </configuration>
                """);
            File.WriteAllText(Path.Combine(work, "Directory.Build.props"), "<Project />");
            File.WriteAllText(Path.Combine(work, "Directory.Build.targets"), "<Project />");
            File.WriteAllText(Path.Combine(work, "Directory.Packages.props"), "<Project />");
            File.WriteAllText(Path.Combine(work, "Consumer.csproj"), $"""
                <Project Sdk="Microsoft.NET.Sdk">
                  <PropertyGroup>
                    <OutputType>Exe</OutputType>
                    <TargetFramework>net10.0</TargetFramework>
                    <ImplicitUsings>enable</ImplicitUsings>
                    <Nullable>enable</Nullable>
                    <NoWarn>MEAI001</NoWarn>
                  </PropertyGroup>
                  <ItemGroup>
                    <PackageReference Include="PixArtSharp" Version="{version}" />
                  </ItemGroup>
                </Project>
                """);
            // The README's example, as a user types it: no setup code, no build import.
            File.WriteAllText(Path.Combine(work, "Program.cs"), """
                using Microsoft.Extensions.AI;
                using PixArtSharp;

                using var generator = new PixArtImageGenerator(args[0]);
                var response = await generator.GenerateImagesAsync("A small cactus with a happy face in the Sahara desert.", new ImageGenerationOptions
                {
                    ImageSize = new(64, 64),
                    AdditionalProperties = new() { ["seed"] = 42, ["steps"] = 2, ["resolution_binning"] = false },
                });
                await File.WriteAllBytesAsync(args[1], ((DataContent)response.Contents[0]).Data.ToArray());
                Console.WriteLine($"wrote {args[1]}");
                """);
            string consumerPng = _tmp.Path("consumer.png");
            Run(work, "dotnet", "build", "-c", "Release", "-nr:false");
            Run(work, "dotnet", "run", "-c", "Release", "--no-build", "--", model, consumerPng);

            // 3. The tool, installed from the feed into a folder of its own.
            Run(work, "dotnet", "tool", "install", "--tool-path", tools, "--add-source", feed, "--version", version, "PixArtSharp.Cli");
            string pixart = Path.Combine(tools, "pixart");
            Assert.Contains("generate", Run(work, pixart, "--help"));
            string toolPng = _tmp.Path("tool.png");
            Run(work, pixart, "generate", "A small cactus with a happy face in the Sahara desert.", "--model", model, "--seed", "42", "--steps", "2",
                "-W", "64", "-H", "64", "--no-resolution-binning", "-o", toolPng, "--quiet", "--dtype", "fp32");

            // 4. Both are what the repository's pixart generate writes.
            string cliPng = _tmp.Path("cli.png");
            var r = CliRunner.Run("generate", "A small cactus with a happy face in the Sahara desert.", "--model", model, "--seed", "42", "--steps", "2",
                "-W", "64", "-H", "64", "--no-resolution-binning", "-o", cliPng, "--quiet");
            Assert.True(r.ExitCode == 0, r.ToString());
            Assert.Equal(File.ReadAllBytes(cliPng), File.ReadAllBytes(consumerPng));
            Assert.Equal(File.ReadAllBytes(cliPng), File.ReadAllBytes(toolPng));
            output.WriteLine($"packages, consumer and tool: {total.Elapsed.TotalSeconds:F1} s");
        }
        finally
        {
            // The restore put this run's version in the NuGet cache: remove it (nothing else uses it).
            string cache = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
                           ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
            foreach (var id in new[] { "pixartsharp", "pixartsharp.cli" })
            {
                try { Directory.Delete(Path.Combine(cache, id, version), recursive: true); } catch (DirectoryNotFoundException) { }
                try { if (!Directory.EnumerateFileSystemEntries(Path.Combine(cache, id)).Any()) Directory.Delete(Path.Combine(cache, id)); }
                catch (DirectoryNotFoundException) { }
            }
        }
    }
}
