namespace ActorBlk.Hardware.Sysfs;

/// <summary>What an attribute tree holds at a normalised path.</summary>
internal enum AttributeNode
{
    /// <summary>Nothing.</summary>
    None,

    /// <summary>An attribute.</summary>
    File,

    /// <summary>A directory (the root, <c>block</c>, <c>block/&lt;dev&gt;/queue</c> ...).</summary>
    Directory,
}

/// <summary>
/// Path lookup in an attribute tree, as Linux's path walk does it, shared by the node's tree
/// (the block layer's) and one device's (<see cref="AttributeTree"/>), so both take the same
/// paths: a leading <c>/sys</c>, repeated slashes, <c>.</c> and <c>..</c>. Each tree says what it
/// holds at a path (<c>nodeAt</c>), from the path alone.
/// </summary>
internal static class AttributePath
{
    /// <summary>
    /// The path a walk reaches, as the tree names it (no <c>/sys/</c>, no surrounding or repeated
    /// slashes), with its <c>.</c> and <c>..</c> components resolved as Linux's path lookup
    /// resolves them (<c>block/nullb0/queue/../size</c> is <c>block/nullb0/size</c>,
    /// <c>block/./nullb0</c> is <c>block/nullb0</c>), but within the tree: it has no symlinks
    /// (Linux's <c>/sys/block/&lt;dev&gt;</c> is one, into <c>/sys/devices/...</c>), so <c>..</c>
    /// goes up the path as written, and at the root, which <c>/</c> and <c>/sys</c> both are, it
    /// stays there. As in the kernel, a <c>.</c> or <c>..</c> must follow a directory.
    /// </summary>
    /// <exception cref="AttributeException">ENOTDIR: a <c>.</c> or <c>..</c> after a file (<c>block/nullb0/size/..</c>) or a path through one; ENOENT: after a name the tree does not have (<c>block/nope/../nullb0/size</c>).</exception>
    public static string Resolve(string path, Func<string, AttributeNode> nodeAt)
    {
        // A directory is checked (nodeAt) only when a name was added since the last check.
        var collapsed = Collapse(path);
        if (!HasDotComponent(collapsed))
        {
            return Mounted(collapsed);
        }

        var names = new List<string>();
        var checkedDirectory = true; // the root
        foreach (var name in collapsed.Split('/'))
        {
            if (name is not ("." or ".."))
            {
                names.Add(name);
                checkedDirectory = false;
                continue;
            }

            if (!checkedDirectory)
            {
                var here = Mounted(string.Join('/', names));
                switch (nodeAt(here))
                {
                    case AttributeNode.File:
                        throw new AttributeException(Mounted(collapsed), AttributeErrno.ENOTDIR, "not a directory");
                    case AttributeNode.None:
                        throw ThroughAFile(here, here, nodeAt)
                            ? new AttributeException(Mounted(collapsed), AttributeErrno.ENOTDIR, "not a directory")
                            : new AttributeException(Mounted(collapsed), AttributeErrno.ENOENT, "no such attribute");
                }

                // Its parent is a directory too: a ".." leaves the walk on a checked directory.
                checkedDirectory = true;
            }

            if (name == ".." && names.Count > 0)
            {
                names.RemoveAt(names.Count - 1);
            }
        }

        return Mounted(string.Join('/', names));
    }

    /// <summary>
    /// True for a path that goes through an attribute as if it were a directory: one ending in a
    /// slash that names a file (<c>block/nullb0/size/</c>), or one with a file before its last part
    /// (<c>block/nullb0/size/x</c>); <c>open(2)</c> says ENOTDIR for both. The walk goes down the
    /// path's prefixes while they are directories: under a prefix that names nothing, nothing is a file.
    /// </summary>
    public static bool ThroughAFile(string path, string normalized, Func<string, AttributeNode> nodeAt)
    {
        if (normalized.Length == 0)
        {
            return false;
        }

        for (var slash = normalized.IndexOf('/', StringComparison.Ordinal); slash > 0; slash = normalized.IndexOf('/', slash + 1))
        {
            switch (nodeAt(normalized[..slash]))
            {
                case AttributeNode.File:
                    return true;
                case AttributeNode.None:
                    return false;
            }
        }

        return path.EndsWith('/') && nodeAt(normalized) == AttributeNode.File;
    }

    /// <summary>
    /// As a path walk does: surrounding slashes dropped, repeated slashes taken as one
    /// (<c>block//nullb0/stat</c> is <c>block/nullb0/stat</c>, as <c>cat /sys/block//nullb0/stat</c>
    /// reads it). Blanks and control characters are part of a name, as they are to <c>open(2)</c>.
    /// </summary>
    public static string Collapse(string path)
    {
        var p = path;
        while (p.Contains("//", StringComparison.Ordinal))
        {
            p = p.Replace("//", "/", StringComparison.Ordinal);
        }

        return p.Trim('/');
    }

    /// <summary>
    /// A leading <c>sys</c> is <c>/sys</c>, the tree's root (<c>sys/block/nullb0</c> is
    /// <c>block/nullb0</c>); only once, so <c>/sys/sys/block/nullb0</c> names nothing.
    /// </summary>
    public static string Mounted(string path) =>
        path.StartsWith("sys/", StringComparison.Ordinal) ? path[4..] : path == "sys" ? string.Empty : path;

    private static bool HasDotComponent(string path)
    {
        foreach (var range in path.AsSpan().Split('/'))
        {
            if (path.AsSpan(range) is "." or "..")
            {
                return true;
            }
        }

        return false;
    }
}
