using System.CommandLine;
using PixArtSharp.Cli.Serve;

var root = new RootCommand("PixArtSharp: PixArt-α / PixArt-LCM text-to-image in .NET")
{
    ServeCommand.Create(),
};
return await root.Parse(args).InvokeAsync();
