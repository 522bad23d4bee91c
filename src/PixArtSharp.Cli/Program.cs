using System.CommandLine;

var root = new RootCommand("pixart: PixArt-α / PixArt-LCM text-to-image in C#");
root.Add(PixArtSharp.Cli.Bench.BenchCommand.Create());
return root.Parse(args).Invoke();
