"""Generate a video from a story: the same command as `phenaki-sample`.

    python sample.py --prompts assets/story.txt --out story.mp4
"""

from phenaki.cli import sample_main

if __name__ == "__main__":
    sample_main()
