using ActorBlk.Hardware.Sysfs;
using Xunit;

namespace ActorBlk.Hardware.Tests.Sysfs;

/// <summary>The one-page bound of list attributes (blk-mq-semantics §11.1 item 6).</summary>
public sealed class PageBufferSpec
{
    private static string Entry(int i) => $"\t{i:x16}\n";

    [Fact]
    public void A_list_that_fits_is_written_whole()
    {
        var page = new PageBuffer().Append("HCTX pending:\n");
        for (var i = 0; i < 10; i++)
        {
            Assert.True(page.TryAppendEntry(Entry(i)));
        }

        Assert.False(page.IsTruncated);
        Assert.Equal(14 + 180, page.Length);
    }

    [Fact]
    public void A_longer_list_stops_with_the_ellipsis_within_the_page()
    {
        // 1,000 entries of 18 bytes after a 14-byte header: (4095 - 14) / 18 = 226 fit, then "\t...\n".
        var page = new PageBuffer().Append("HCTX pending:\n");
        var written = 0;
        for (var i = 0; i < 1000 && page.TryAppendEntry(Entry(i)); i++)
        {
            written++;
        }

        Assert.Equal(226, written);
        Assert.True(page.IsTruncated);
        var text = page.ToString();
        Assert.EndsWith("\t...\n", text);
        Assert.Equal(14 + (226 * 18) + 5, text.Length);
        Assert.False(page.TryAppendEntry(Entry(0)));
    }

    [Fact]
    public void When_even_the_ellipsis_does_not_fit_one_entry_steps_back()
    {
        // A header that leaves 4095 - 4075 = 20 bytes: one 18-byte entry fits, then only 2 bytes
        // are left, too few for the 5-byte ellipsis, so that entry gives its place to it.
        var page = new PageBuffer().Append(new string('h', 4075));
        Assert.True(page.TryAppendEntry(Entry(1)));
        Assert.False(page.TryAppendEntry(Entry(2)));

        var text = page.ToString();
        Assert.Equal(4075 + 5, text.Length);
        Assert.EndsWith("h\t...\n", text);
    }
}
