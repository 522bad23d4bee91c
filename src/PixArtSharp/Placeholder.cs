namespace PixArtSharp;
