using ActorBlk.Hardware.Topology;
using Xunit;

namespace ActorBlk.Hardware.Tests.Topology;

public sealed class CpuSetSpec
{
    [Theory]
    [InlineData("0-3,5", new[] { 0, 1, 2, 3, 5 })]
    [InlineData("0", new[] { 0 })]
    [InlineData("", new int[0])]
    [InlineData("0, 1, 2, 3", new[] { 0, 1, 2, 3 })]
    [InlineData("2-2,7-9", new[] { 2, 7, 8, 9 })]
    [InlineData("64-66", new[] { 64, 65, 66 })]
    public void Parses_the_kernel_cpulist_format(string text, int[] cpus)
    {
        Assert.Equal(cpus, CpuSet.Parse(text));
    }

    [Theory]
    [InlineData("a")]
    [InlineData("3-1")]
    [InlineData("-1")]
    [InlineData("1,,2")]
    public void Rejects_text_that_is_not_a_cpulist(string text)
    {
        Assert.Throws<FormatException>(() => CpuSet.Parse(text));
    }

    [Fact]
    public void Formats_ranges_as_the_kernel_does()
    {
        Assert.Equal("0-3,5,7-8", CpuSet.Of(0, 1, 2, 3, 5, 7, 8).ToCpuListString());
    }

    [Fact]
    public void Formats_cpu_list_attribute_with_comma_and_space()
    {
        // blk-mq-semantics §11.1 item 2: cpu_list prints "0, 1, 2, 3".
        Assert.Equal("0, 1, 2, 3", CpuSet.Range(4).ToCommaSeparatedString());
    }

    [Fact]
    public void Set_algebra_matches_cpumask_operations()
    {
        var a = CpuSet.Of(0, 1, 2, 70);
        var b = CpuSet.Of(2, 3, 70);
        Assert.Equal(CpuSet.Of(0, 1, 2, 3, 70), a.Union(b));
        Assert.Equal(CpuSet.Of(2, 70), a.Intersect(b));
        Assert.Equal(CpuSet.Of(0, 1), a.Except(b));
        Assert.True(a.Intersects(b));
        Assert.False(CpuSet.Of(0).Intersects(CpuSet.Of(1)));
        Assert.Equal(0, a.First);
        Assert.Equal(70, a.Last);
        Assert.Equal(70, a.Next(2));
        Assert.Equal(-1, a.Next(70));
        Assert.Equal(CpuSet.Of(0, 2, 70), a.Without(1));
        Assert.Equal(a, a.Without(1).With(1));
    }
}
