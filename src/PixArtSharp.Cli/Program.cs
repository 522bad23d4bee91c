using TorchSharp;
var t = torch.randn(new long[]{2,3}, generator: new torch.Generator(42));
Console.WriteLine(string.Join(",", t.data<float>().ToArray()));
Console.WriteLine(torch.get_num_threads());
return 0;
